//! Security as a Kubernetes user meets it: ServiceAccount tokens from `kubectl create
//! token` (TokenRequest) that authenticate as their ServiceAccount while it, and the pod
//! they are bound to, exist; the issuer's OIDC discovery; refused requests.

#![allow(clippy::unwrap_used)]

mod common;

use common::{KrustServer, kubectl_as, server_url, token_kubeconfig};

/// The claims of a JWT, unverified.
fn claims_of(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap(),
    )
    .unwrap()
}

#[test]
fn service_account_tokens_work_while_what_they_are_bound_to_exists() {
    let server = KrustServer::start_control_plane(&[]);
    server.ok(&["create", "serviceaccount", "bob"]);
    // What bob may do, RBAC says: viewing the namespace.
    server.ok(&[
        "create",
        "rolebinding",
        "bob-view",
        "--clusterrole=view",
        "--serviceaccount=default:bob",
    ]);
    server.wait_for(
        &["auth", "can-i", "get", "serviceaccounts", "--as=system:serviceaccount:default:bob"],
        std::time::Duration::from_secs(10),
        |a| a == "yes",
    );
    // A token authenticates as its ServiceAccount.
    let token = server.ok(&["create", "token", "bob", "--duration", "20m"]);
    assert_eq!(token.split('.').count(), 3, "{token}");
    let config = token_kubeconfig(&server, &token);
    let (ok, out, err) = kubectl_as(&server, &config, &["get", "serviceaccounts", "-o", "name"]);
    assert!(ok && out.contains("serviceaccount/bob"), "{out} {err}");
    // Its claims: the subject, the issuer's audience, an expiry 20 minutes out.
    let claims = claims_of(&token);
    assert_eq!(claims["sub"], "system:serviceaccount:default:bob");
    assert_eq!(claims["aud"][0], "https://kubernetes.default.svc.cluster.local");
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 1200);
    // Another audience's token is not for the API server; an altered one is nothing.
    let elsewhere = server.ok(&["create", "token", "bob", "--audience", "https://vault.example"]);
    let (ok, _, err) =
        kubectl_as(&server, &token_kubeconfig(&server, &elsewhere), &["get", "pods"]);
    assert!(!ok && err.contains("Unauthorized"), "{err}");
    // TokenReview answers for both, each for its own audience.
    let review = |token: &str, audiences: &str| {
        let body = format!(
            "{{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\",\"spec\":{{\"token\":\"{token}\"{audiences}}}}}"
        );
        let out = server.ok_stdin(&["create", "-f", "-", "-o", "json"], &body);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["status"].clone()
    };
    let status = review(&token, "");
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(status["user"]["username"], "system:serviceaccount:default:bob");
    assert_eq!(review(&elsewhere, "")["authenticated"], false);
    let status = review(&elsewhere, ",\"audiences\":[\"https://vault.example\"]");
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(status["audiences"][0], "https://vault.example");
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    let (ok, _, err) = kubectl_as(&server, &token_kubeconfig(&server, &forged), &["get", "pods"]);
    assert!(!ok && err.contains("Unauthorized"), "{err}");
    // Too short a duration: upstream's 422.
    let short = server.kubectl(&["create", "token", "bob", "--duration", "5m"]);
    assert!(
        String::from_utf8_lossy(&short.stderr)
            .contains("may not specify a duration less than 10 minutes"),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
    // A token bound to a pod ends with the pod.
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: holder}\nspec:\n  serviceAccountName: bob\n  automountServiceAccountToken: false\n  containers: [{name: c, image: x}]\n",
    );
    let bound = server.ok(&[
        "create",
        "token",
        "bob",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "holder",
    ]);
    let bound_config = token_kubeconfig(&server, &bound);
    assert!(kubectl_as(&server, &bound_config, &["get", "pods"]).0);
    server.ok(&["delete", "pod", "holder", "--grace-period=0", "--force"]);
    let (ok, _, err) = kubectl_as(&server, &bound_config, &["get", "pods"]);
    assert!(!ok && err.contains("Unauthorized"), "the pod's token outlived it: {err}");
    // A pod of another ServiceAccount cannot hold bob's token.
    server.ok_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: other}\nspec:\n  automountServiceAccountToken: false\n  containers: [{name: c, image: x}]\n",
    );
    let refused = server.kubectl(&[
        "create",
        "token",
        "bob",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "other",
    ]);
    assert!(!refused.status.success());
    // And every token of bob's ends with bob.
    server.ok(&["delete", "serviceaccount", "bob"]);
    let (ok, _, err) = kubectl_as(&server, &config, &["get", "pods"]);
    assert!(!ok && err.contains("Unauthorized"), "the token outlived its ServiceAccount: {err}");

    // Impersonation: the admin acts as someone else, with the groups asked for.
    let whoami = |args: &[&str]| {
        let out = server.ok(&[&["auth", "whoami", "-o", "json"], args].concat());
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["status"]["userInfo"].clone()
    };
    let carol = whoami(&["--as=carol", "--as-group=devs"]);
    assert_eq!(carol["username"], "carol");
    assert_eq!(carol["groups"], serde_json::json!(["devs", "system:authenticated"]));
    let robot = whoami(&["--as=system:serviceaccount:default:robot"]);
    assert_eq!(
        robot["groups"],
        serde_json::json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );
    let headless = server.kubectl(&["get", "pods", "--as-group=devs"]);
    assert!(
        String::from_utf8_lossy(&headless.stderr).contains("without impersonating a user"),
        "{}",
        String::from_utf8_lossy(&headless.stderr)
    );

    // The issuer's discovery, readable without credentials.
    // (kubectl without credentials would prompt for a password: curl asks instead.)
    let url = server_url(&server);
    let anonymous = |path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sk", "-w", "\n%{http_code}", &format!("{url}{path}")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_owned(), body.to_owned())
    };
    let (code, body) = anonymous("/.well-known/openid-configuration");
    assert_eq!(code, "200", "{body}");
    let discovery: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(discovery["issuer"], "https://kubernetes.default.svc.cluster.local");
    assert_eq!(
        discovery["jwks_uri"],
        "https://kubernetes.default.svc.cluster.local/openid/v1/jwks"
    );
    let (code, body) = anonymous("/openid/v1/jwks");
    assert!(code == "200" && body.contains("\"kty\":\"EC\""), "{body}");
    let (code, _) = anonymous("/api/v1/pods");
    assert_eq!(code, "401");
}

/// Every pod gets upstream's `kube-api-access-*` volume: a token bound to it, the cluster
/// CA from
/// `kube-root-ca.crt`, its namespace; unless it opts out; and it must name a ServiceAccount
/// that exists.
#[test]
fn pods_get_a_bound_token_the_ca_and_their_namespace() {
    let server = KrustServer::start_with_agent(&[]);
    let node = server.node.clone().unwrap();
    let pod = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 0\n{extra}  containers:\n  - name: c\n    image: {}\n    command: [sh, -c, 'trap \"exit 0\" TERM; sleep 3600 & wait']\n---\n",
            common::BUSYBOX
        )
    };
    server.ok_stdin(
        &["apply", "-f", "-"],
        &[pod("with", ""), pod("without", "  automountServiceAccountToken: false\n")].concat(),
    );
    for name in ["with", "without"] {
        server.wait_phase("default", name, "Running", std::time::Duration::from_secs(60));
    }
    let volume = server.pod_field("default", "with", "{.spec.volumes[0].name}");
    assert!(volume.starts_with("kube-api-access-"), "{volume}");
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let namespace = server.ok(&["exec", "with", "--", "cat", &format!("{dir}/namespace")]);
    assert_eq!(namespace, "default");
    let ca = server.ok(&["exec", "with", "--", "cat", &format!("{dir}/ca.crt")]);
    let cluster_ca =
        server.ok(&["get", "configmap", "kube-root-ca.crt", "-o", "jsonpath={.data.ca\\.crt}"]);
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----") && ca.trim() == cluster_ca.trim());
    // The pod's token authenticates as its ServiceAccount, which may view the namespace.
    // (Read out and used from the host: busybox's TLS client offers no suite the server
    // accepts, AEAD only.)
    let token = server.ok(&["exec", "with", "--", "cat", &format!("{dir}/token")]);
    let config = token_kubeconfig(&server, &token);
    let (ok, _, err) = kubectl_as(&server, &config, &["get", "pod", "with", "-o", "name"]);
    assert!(!ok && err.contains("forbidden"), "the pod's account reads pods unbound: {err}");
    server.ok(&[
        "create",
        "rolebinding",
        "default-view",
        "--clusterrole=view",
        "--serviceaccount=default:default",
    ]);
    server.wait_for(
        &["auth", "can-i", "get", "pods", "--as=system:serviceaccount:default:default"],
        std::time::Duration::from_secs(10),
        |a| a == "yes",
    );
    let (ok, out, err) = kubectl_as(&server, &config, &["get", "pod", "with", "-o", "name"]);
    assert!(ok && out == "pod/with", "{out} {err}");
    let claims = claims_of(&token);
    assert_eq!(claims["sub"], "system:serviceaccount:default:default");
    assert_eq!(claims["kubernetes.io"]["pod"]["name"], "with");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 3607);
    // Opted out: nothing mounted.
    let listing = server.kubectl(&["exec", "without", "--", "ls", dir]);
    assert!(!listing.status.success());
    assert_eq!(server.pod_field("default", "without", "{.spec.volumes}"), "");
    // A ServiceAccount that does not exist: upstream's 403.
    let missing = server.kubectl_with(
        common::tool("kubectl"),
        &["apply", "-f", "-"],
        Some(&pod("orphan", "  serviceAccountName: nobody\n")),
    );
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains(
            "error looking up service account default/nobody: serviceaccount \"nobody\" not found"
        ),
        "{err}"
    );
    server.ok(&["delete", "pod", "--all", "--wait=true"]);
}

/// The API server and the agent endpoint speak TLS 1.2 or 1.3 with AEAD suites only: an
/// older protocol or a CBC suite gets no handshake.
#[test]
fn tls_is_1_2_or_newer_with_aead_suites_only() {
    let server = KrustServer::start_with_agent(&[]);
    let url = server_url(&server).trim_start_matches("https://").to_owned();
    let node = server.node.clone().unwrap();
    let agent_port = server.ok(&[
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}",
    ]);
    let agent_ip = server.ok(&[
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ]);
    // Whether a handshake with these `openssl s_client` options completes.
    let handshake = |address: &str, options: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-connect", address])
            .args(options)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("Cipher is ") && !text.contains("Cipher is (NONE)")
    };
    for address in [url.clone(), format!("{agent_ip}:{agent_port}")] {
        assert!(
            handshake(&address, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]),
            "{address}: AEAD on TLS 1.2"
        );
        assert!(handshake(&address, &["-tls1_3"]), "{address}: TLS 1.3");
        // (The client is let offer them: OpenSSL 3 would not by itself.)
        assert!(
            !handshake(&address, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]),
            "{address}: TLS 1.1 refused"
        );
        assert!(
            !handshake(
                &address,
                &[
                    "-tls1_2",
                    "-cipher",
                    "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:AES128-SHA:@SECLEVEL=0"
                ]
            ),
            "{address}: CBC refused"
        );
    }
}

/// `--token-auth-file`: static tokens authenticate as their line says, TokenReview agrees,
/// a wrong one gets 401, and a malformed file stops the server with the line at fault.
#[test]
fn static_token_file_users_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.csv");
    std::fs::write(&file, "# static users\ns3cret-carol,carol,1001,\"devs,ops\"\n").unwrap();
    let flag = format!("--token-auth-file={}", file.display());
    let server = KrustServer::start_control_plane(&[&flag]);
    let config = token_kubeconfig(&server, "s3cret-carol");
    let (ok, out, err) = kubectl_as(&server, &config, &["auth", "whoami", "-o", "json"]);
    assert!(ok, "{err}");
    let user: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(user["status"]["userInfo"]["username"], "carol");
    assert_eq!(
        user["status"]["userInfo"]["groups"],
        serde_json::json!(["devs", "ops", "system:authenticated"])
    );
    let review = server.ok_stdin(
        &["create", "-f", "-", "-o", "jsonpath={.status.user.username}"],
        "{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\",\"spec\":{\"token\":\"s3cret-carol\"}}",
    );
    assert_eq!(review, "carol");
    let (ok, _, err) =
        kubectl_as(&server, &token_kubeconfig(&server, "s3cret-mallory"), &["get", "pods"]);
    // (kubectl words a 401 on its discovery this way.)
    assert!(
        !ok && err.contains("the server has asked for the client to provide credentials"),
        "{err}"
    );
    // A line without a user: the server does not start, and says which line.
    std::fs::write(&file, "s3cret-carol,carol,1001\nlonely\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_krust"))
        .args(["server", "--disable-agent", "--https-listen-port=0", &flag])
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .arg(format!("--write-kubeconfig={}", dir.path().join("kc.yaml").display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("line 2: want token,user,uid[,groups]"), "{err}");
}

/// The join endpoint: wrong tokens from one address are refused, then the address is held
/// off with 429 and `Retry-After` (even with the right token) for the rest of the window.
#[test]
fn the_join_endpoint_holds_off_an_address_that_guesses() {
    let server = KrustServer::start_control_plane(&[]);
    let url = server_url(&server);
    let token = std::fs::read_to_string(server.dir.path().join("data/server/node-token")).unwrap();
    // (status, headers) of one credentials request with `token`.
    let join = |token: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sk", "-D", "-", "-o", "/dev/null", "-X", "POST"])
            .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
            .args(["-H", "Content-Type: application/json"])
            .args(["--data", "{\"nodeName\":\"guesser\",\"addresses\":[]}"])
            .arg(format!("{url}/v1-krust/node-credentials"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(join(&token).starts_with("HTTP/1.1 200") || join(&token).starts_with("HTTP/2 200"));
    // A name a live node holds (its Lease renewed just now) is not given to another.
    let renewed = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.000000Z"])
        .output()
        .unwrap();
    let renewed = String::from_utf8_lossy(&renewed.stdout).trim().to_owned();
    server.ok_stdin(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{name: guesser, namespace: kube-node-lease}}\nspec: {{holderIdentity: guesser, leaseDurationSeconds: 40, renewTime: \"{renewed}\"}}\n"
        ),
    );
    let taken = join(&token);
    assert!(taken.contains(" 409"), "a live node's name was given out: {taken}");
    for _ in 0..10 {
        let answer = join("wrong");
        assert!(answer.contains(" 401"), "{answer}");
    }
    let held = join("wrong");
    assert!(held.contains(" 429") && held.to_lowercase().contains("retry-after:"), "{held}");
    let held = join(&token);
    assert!(held.contains(" 429"), "the right token waits too: {held}");
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle) {
            found.push(path);
        }
    }
    found
}

/// `krust secrets-encrypt ARGS` against `server`: (success, stdout + stderr).
fn secrets_encrypt(server: &KrustServer, args: &[&str]) -> (bool, String) {
    krust_cli(server, "secrets-encrypt", args)
}

/// `krust COMMAND ARGS` with `server`'s admin kubeconfig: (success, stdout + stderr).
fn krust_cli(server: &KrustServer, command: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_krust"))
        .arg(command)
        .args(args)
        .env("KUBECONFIG", &server.kubeconfig)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

const MARK: &str = "hunter2-plaintext-mark";

fn create_marked_secret(server: &KrustServer, name: &str) {
    server.ok(&["create", "secret", "generic", name, &format!("--from-literal=password={MARK}")]);
    assert_eq!(server.ok(&["get", "secret", name, "-o", "jsonpath={.data.password}"]), b64(MARK));
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The plaintext (as sent, and base64 as stored in `data`) appears in no file of `dir`.
fn assert_no_plaintext(dir: &std::path::Path) {
    for needle in [MARK.to_owned(), b64(MARK)] {
        let found = files_containing(dir, needle.as_bytes());
        assert!(found.is_empty(), "{needle} in {found:?}");
    }
}

#[test]
fn secrets_are_encrypted_at_rest_and_keys_rotate_without_a_restart() {
    let mut server = KrustServer::start(&[]);
    let db = server.dir.path().join("data/server/db");
    create_marked_secret(&server, "db-password");
    assert_no_plaintext(&db);
    // A ConfigMap is not encrypted: the same grep finds it, so the grep itself works.
    server.ok(&["create", "configmap", "visible", "--from-literal=k=configmap-plaintext-mark"]);
    assert!(
        !files_containing(&db, b"configmap-plaintext-mark").is_empty(),
        "the grep finds nothing at all"
    );
    server.ok(&["delete", "configmap", "visible"]);

    let (ok, status) = secrets_encrypt(&server, &["status"]);
    assert!(ok, "{status}");
    assert!(status.contains("Encryption Status: Enabled"), "{status}");
    assert!(status.contains("Current Rotation Stage: start"), "{status}");
    assert!(status.contains("XSalsa20-Poly1305"), "{status}");
    let config = server.dir.path().join("data/server/cred/encryption-config.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
    let before = std::fs::read_to_string(&config).unwrap();

    // Stages in k3s's order.
    let (ok, out) = secrets_encrypt(&server, &["rotate"]);
    assert!(!ok && out.contains("rotate is not allowed at stage start"), "{out}");
    for (stage, expect) in
        [("prepare", "Stage: prepare"), ("rotate", "Stage: rotate"), ("reencrypt", "1 rewritten")]
    {
        let (ok, out) = secrets_encrypt(&server, &[stage]);
        assert!(ok && out.contains(expect), "{stage}: {out}");
        assert_eq!(
            server.ok(&["get", "secret", "db-password", "-o", "jsonpath={.data.password}"]),
            b64(MARK)
        );
    }
    let after = std::fs::read_to_string(&config).unwrap();
    assert_ne!(before, after, "the key was not replaced");
    let (ok, out) = secrets_encrypt(&server, &["rotate-keys"]);
    assert!(ok && out.contains("Stage: reencrypt_finished"), "{out}");
    create_marked_secret(&server, "api-key");
    assert_no_plaintext(&db);

    // The rotated configuration outlives a restart, and the disk holds ciphertext.
    server.restart();
    assert_eq!(
        server.ok(&["get", "secret", "db-password", "-o", "jsonpath={.data.password}"]),
        b64(MARK)
    );
    server.stop();
    let raw = std::process::Command::new(env!("CARGO_BIN_EXE_krust"))
        .args(["debug", "store-get", "--dir"])
        .arg(&db)
        .args(["--key", "/registry/core/secrets/default/db-password"])
        .output()
        .unwrap();
    assert!(raw.status.success(), "{}", String::from_utf8_lossy(&raw.stderr));
    assert!(
        raw.stdout.starts_with(b"k8s:enc:secretbox:v1:key-"),
        "{:?}",
        String::from_utf8_lossy(&raw.stdout)
    );
    assert_no_plaintext(&db);
}

#[test]
fn secrets_in_etcd_are_ciphertext_too() {
    let etcd = storage::testing::EtcdServer::start().expect("etcd-server must be installed");
    let server = KrustServer::start(&["--datastore-endpoint", &etcd.endpoint]);
    create_marked_secret(&server, "db-password");
    let (ok, out) = secrets_encrypt(&server, &["rotate-keys"]);
    assert!(ok, "{out}");
    create_marked_secret(&server, "api-key");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let values = runtime.block_on(async {
        let store = storage::etcd::EtcdStore::connect(&etcd.endpoint).await.unwrap();
        let response = storage::Store::range(
            &store,
            storage::RangeRequest::prefix("/registry/core/secrets/default/"),
        )
        .await
        .unwrap();
        response.kvs
    });
    assert_eq!(values.len(), 2, "{values:?}");
    for kv in values {
        assert!(kv.value.starts_with(b"k8s:enc:secretbox:v1:"), "{kv:?}");
        for needle in [MARK.to_owned(), b64(MARK)] {
            assert!(!kv.value.windows(needle.len()).any(|w| w == needle.as_bytes()), "{kv:?}");
        }
    }
}

#[test]
fn an_encryption_configuration_of_your_own_is_used_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("encryption.yaml");
    let write = |key: &str| {
        std::fs::write(
            &config,
            format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets, configmaps]\n    providers:\n      - aesgcm:\n          keys:\n            - name: mine\n              secret: {}\n      - identity: {{}}\n",
                b64(key)
            ),
        )
        .unwrap()
    };
    // A key of the wrong length stops the server, naming the place.
    write("sixteen-byte-key-but-not-32-");
    let arg = format!("encryption-provider-config={}", config.display());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_krust"))
        .args(["server", "--disable-agent", "--bind-address=127.0.0.1"])
        .arg(format!("--https-listen-port={}", common::free_port()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--write-kubeconfig")
        .arg(dir.path().join("kc.yaml"))
        .args(["--kube-apiserver-arg", &arg])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with a bad key");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr
            .contains("resources[0].providers[0].aesgcm.keys[0].secret: a aesgcm key is 16 or 32"),
        "{stderr}"
    );

    write("0123456789abcdef0123456789abcdef");
    let server = KrustServer::start(&["--kube-apiserver-arg", &arg]);
    create_marked_secret(&server, "db-password");
    // This configuration names ConfigMaps too.
    server.ok(&["create", "configmap", "also", &format!("--from-literal=k={MARK}")]);
    let db = server.dir.path().join("data/server/db");
    assert_no_plaintext(&db);
    let (ok, status) = secrets_encrypt(&server, &["status"]);
    assert!(ok && status.contains("AES-GCM") && status.contains("mine"), "{status}");
    // Its keys are the operator's to rotate; reencrypt still works.
    let (ok, out) = secrets_encrypt(&server, &["rotate-keys"]);
    assert!(!ok && out.contains("rotate its keys by editing it"), "{out}");
    let (ok, out) = secrets_encrypt(&server, &["reencrypt"]);
    assert!(ok && out.contains("0 rewritten"), "{out}");
    assert!(!server.dir.path().join("data/server/cred/encryption-config.json").exists());
}

/// A pod manifest with `spec` (YAML lines indented by two) in namespace `ns`.
fn pod_yaml(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}")
}

#[test]
fn pod_security_enforces_baseline_warns_restricted_and_follows_namespace_labels() {
    let server = KrustServer::start(&[]);
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let plain = "  containers: [{name: app, image: busybox}]\n";
    let host = "  hostNetwork: true\n  volumes: [{name: root, hostPath: {path: /}}]\n  containers: [{name: app, image: busybox, securityContext: {privileged: true}}]\n";
    let hardened = "  securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}\n  containers: [{name: app, image: busybox, securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}}]\n";

    // The default: baseline enforced, restricted warned.
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &["create", "-f", "-"],
        Some(&pod_yaml("default", "plain", plain)),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Warning: would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"app\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"app\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"app\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"app\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"),
        "{}",
        stderr(&out)
    );
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &["create", "-f", "-"],
        Some(&pod_yaml("default", "host", host)),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("pods \"host\" is forbidden: violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true), hostPath volumes (volume \"root\"), privileged (container \"app\" must not set securityContext.privileged=true)"),
        "{}",
        stderr(&out)
    );
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &["create", "-f", "-"],
        Some(&pod_yaml("default", "hardened", hardened)),
    );
    assert!(out.status.success() && !stderr(&out).contains("Warning"), "{}", stderr(&out));
    // kube-system is exempt.
    server.ok_stdin(&["create", "-f", "-"], &pod_yaml("kube-system", "host", host));

    // A namespace's labels choose its levels; a bad label is refused.
    server.ok(&["create", "namespace", "strict"]);
    let out = server.kubectl(&[
        "label",
        "namespace",
        "strict",
        "pod-security.kubernetes.io/enforce=strict",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("Invalid value: \"strict\": must be one of privileged, baseline, restricted"),
        "{}",
        stderr(&out)
    );
    server.ok_stdin(&["create", "-f", "-"], &pod_yaml("strict", "plain", plain));
    let out = server.kubectl(&[
        "label",
        "namespace",
        "strict",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Warning: existing pods in namespace \"strict\" violate the new PodSecurity enforce level \"restricted:latest\"")
            && stderr(&out).contains("Warning: plain: allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"),
        "{}",
        stderr(&out)
    );
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &["create", "-f", "-"],
        Some(&pod_yaml("strict", "plain2", plain)),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("violates PodSecurity \"restricted:latest\""),
        "{}",
        stderr(&out)
    );
    server.ok_stdin(&["create", "-f", "-"], &pod_yaml("strict", "hardened", hardened));
    // A Deployment is warned about, not refused: its pods are what enforcement stops.
    let out = server.kubectl(&["create", "deployment", "web", "-n", "strict", "--image=busybox"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Warning: would violate PodSecurity \"restricted:latest\""),
        "{}",
        stderr(&out)
    );
    // A privileged namespace admits the host pod.
    server.ok(&["create", "namespace", "ops"]);
    server.ok(&[
        "label",
        "namespace",
        "ops",
        "pod-security.kubernetes.io/enforce=privileged",
        "pod-security.kubernetes.io/warn=privileged",
    ]);
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &["create", "-f", "-"],
        Some(&pod_yaml("ops", "host", host)),
    );
    assert!(out.status.success() && !stderr(&out).contains("Warning"), "{}", stderr(&out));
}

#[test]
fn the_cluster_pod_security_default_is_a_flag() {
    let server = KrustServer::start(&["--pod-security-default", "enforce=restricted"]);
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &["create", "-f", "-"],
        Some(&pod_yaml("default", "plain", "  containers: [{name: app, image: busybox}]\n")),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("violates PodSecurity \"restricted:latest\"")
    );
}

/// `krust token ARGS` against `server`: (success, stdout + stderr).
fn krust_token(server: &KrustServer, args: &[&str]) -> (bool, String) {
    krust_cli(server, "token", args)
}

#[test]
fn bootstrap_tokens_join_and_authenticate_until_deleted_or_expired() {
    let server = KrustServer::start(&[]);
    let url = server_url(&server);
    // The HTTP status of a node-credentials request with `token`.
    let join = |token: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["-H", "Content-Type: application/json"])
            .args(["--data", "{\"nodeName\":\"bootstrapped\",\"addresses\":[]}"])
            .arg(format!("{url}/v1-krust/node-credentials"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let whoami = |token: &str| {
        kubectl_as(
            &server,
            &token_kubeconfig(&server, token),
            &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
        )
    };

    let (ok, created) = krust_token(
        &server,
        &[
            "create",
            "--ttl",
            "1h",
            "--description",
            "for rack 7",
            "--groups",
            "system:bootstrappers:rack7",
        ],
    );
    assert!(ok, "{created}");
    let full = created.trim().to_owned();
    assert!(full.starts_with("K10") && full.contains("::"), "{full}");
    let bare = full.split("::").nth(1).unwrap().to_owned();
    let id = bare.split('.').next().unwrap().to_owned();
    let (ok, list) = krust_token(&server, &["list"]);
    assert!(
        ok && list.contains(&format!("{id}.<hidden>"))
            && list.contains("for rack 7")
            && list.contains("authentication,signing"),
        "{list}"
    );
    assert!(!list.contains(&bare), "list shows the secret: {list}");

    // The Secret is upstream's: kubectl sees its type.
    let kind = server.ok(&[
        "get",
        "secret",
        "-n",
        "kube-system",
        &format!("bootstrap-token-{id}"),
        "-o",
        "jsonpath={.type}",
    ]);
    assert_eq!(kind, "bootstrap.kubernetes.io/token");
    let (ok, stdout, stderr) = whoami(&bare);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("system:bootstrap:{id}"));
    assert_eq!(join(&full), "200");
    assert_eq!(join(&bare), "200");
    // Another cluster's CA hash in front of it is refused.
    assert_eq!(join(&format!("K10{}::{bare}", "0".repeat(64))), "401");

    let (ok, out) = krust_token(&server, &["delete", &id]);
    assert!(ok, "{out}");
    assert!(!whoami(&bare).0, "a deleted token still authenticates");
    assert_eq!(join(&full), "401");

    // An expired token stops working by itself.
    let (ok, created) = krust_token(&server, &["create", "--ttl", "2s"]);
    assert!(ok, "{created}");
    let bare = created.trim().split("::").nth(1).unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while whoami(&bare).0 {
        assert!(std::time::Instant::now() < deadline, "the token did not expire");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(join(&bare), "401");
    let (ok, out) = krust_token(&server, &["create", "abc.def"]);
    assert!(!ok && out.contains("is not a bootstrap token"), "{out}");
    let (ok, out) = krust_token(&server, &["create", "--groups", "system:masters"]);
    assert!(!ok && out.contains("must start with system:bootstrappers:"), "{out}");
}

#[test]
fn the_audit_log_records_what_its_policy_asks_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: None\n    nonResourceURLs: ['/api*', '/version', '/openapi*']\n  - level: RequestResponse\n    resources: [{group: '', resources: [configmaps, secrets]}]\n    verbs: [create, get]\n  - level: Metadata\n    resources: [{group: '', resources: [namespaces, pods]}]\n  - level: None\n",
    )
    .unwrap();
    let log = dir.path().join("audit/audit.log");
    let server = KrustServer::start(&[
        "--kube-apiserver-arg",
        &format!("audit-policy-file={}", policy.display()),
        "--kube-apiserver-arg",
        &format!("audit-log-path={}", log.display()),
    ]);
    server.ok(&["create", "configmap", "settings", "--from-literal=mode=fast"]);
    server.ok(&["get", "configmap", "settings"]);
    server.ok(&["create", "secret", "generic", "db", &format!("--from-literal=password={MARK}")]);
    server.ok(&["get", "secret", "db", "-o", "yaml"]);
    server.ok(&["get", "namespace", "default"]);
    server.ok(&["run", "plain", "--image=busybox"]);
    server.ok(&["create", "deployment", "web", "--image=busybox"]);
    let alice = common::kubeconfig_as(&server, "alice", "{token: none}");
    let _ = kubectl_as(&server, &alice, &["get", "configmap", "settings"]);
    // Events reach the file within moments (a writer thread flushes as they come).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let events: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let events: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if events.len() >= 6 || std::time::Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let find = |verb: &str, resource: &str| {
        events
            .iter()
            .find(|e| e["verb"] == verb && e["objectRef"]["resource"] == resource)
            .unwrap_or_else(|| panic!("no {verb} {resource} in {events:#?}"))
    };
    let created = find("create", "configmaps");
    assert_eq!(created["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(created["kind"], "Event");
    assert_eq!(created["level"], "RequestResponse");
    assert_eq!(created["stage"], "ResponseComplete");
    assert_eq!(created["responseStatus"]["code"], 201);
    assert_eq!(created["objectRef"]["namespace"], "default");
    assert_eq!(created["requestObject"]["data"]["mode"], "fast");
    assert_eq!(created["responseObject"]["metadata"]["name"], "settings");
    assert!(created["user"]["groups"].as_array().unwrap().iter().any(|g| g == "system:masters"));
    assert!(created["auditID"].as_str().is_some_and(|id| id.len() == 36));
    let read = find("get", "configmaps");
    assert_eq!(read["objectRef"]["name"], "settings");
    assert_eq!(find("get", "namespaces")["level"], "Metadata");
    assert!(find("get", "namespaces").get("responseObject").is_none());
    // Secrets: metadata only, whatever the policy says.
    assert_eq!(find("create", "secrets")["level"], "Metadata");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(MARK) && !text.contains(&b64(MARK)), "a secret value was logged");
    // Nothing the policy leaves out, and no RequestReceived stage.
    assert!(events.iter().all(|e| e["stage"] != "RequestReceived"));
    assert!(events.iter().all(|e| e["objectRef"]["resource"] != "deployments"));
    // Pod Security's audit level (restricted, by default) annotates the pod's event.
    let pod = find("create", "pods");
    assert_eq!(pod["annotations"]["pod-security.kubernetes.io/enforce-policy"], "baseline:latest");
    let violations =
        pod["annotations"]["pod-security.kubernetes.io/audit-violations"].as_str().unwrap_or("");
    assert!(
        violations.starts_with(
            "would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"
        ),
        "{pod:#}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);
}

/// A key and a PEM certificate request for `subject` (`/CN=…/O=…`) with `sans` (an openssl
/// `subjectAltName` value, or empty), made with the real openssl in `dir`.
fn openssl_request(
    dir: &std::path::Path,
    name: &str,
    subject: &str,
    sans: &str,
) -> (std::path::PathBuf, String) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let ok = std::process::Command::new("openssl")
        .args(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    let mut req = std::process::Command::new("openssl");
    req.args(["req", "-new", "-key"]).arg(&key).args(["-subj", subject, "-out"]).arg(&csr);
    if !sans.is_empty() {
        req.args(["-addext", &format!("subjectAltName={sans}")]);
    }
    assert!(req.status().unwrap().success());
    (key, std::fs::read_to_string(&csr).unwrap())
}

fn csr_manifest(name: &str, pem: &str, signer: &str, usages: &[&str]) -> String {
    serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {"request": b64(pem), "signerName": signer, "usages": usages, "expirationSeconds": 3600}
    })
    .to_string()
}

/// Polls until `jsonpath` of CSR `name` is not empty; returns it.
fn wait_csr(server: &KrustServer, name: &str, jsonpath: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let value = server.ok(&["get", "csr", name, "-o", &format!("jsonpath={jsonpath}")]);
        if !value.is_empty() {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "csr {name}: {jsonpath} stayed empty");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn certificate_requests_are_approved_signed_and_the_certificates_work() {
    let server = KrustServer::start_control_plane(&[]);
    let dir = server.dir.path().to_owned();
    // A user's client certificate: requested, approved by an admin, signed, used.
    let (key, pem) = openssl_request(&dir, "carol", "/CN=carol/O=devs", "");
    server.ok_stdin(
        &["create", "-f", "-"],
        &csr_manifest("carol", &pem, "kubernetes.io/kube-apiserver-client", &["client auth"]),
    );
    assert_eq!(
        server.ok(&["get", "csr", "carol", "-o", "jsonpath={.spec.username}"]),
        "system:admin"
    );
    assert!(server.ok(&["get", "csr", "carol"]).contains("Pending"));
    // Approving needs `approve` on the signer: alice may update approvals but not that.
    server.ok(&[
        "create",
        "clusterrole",
        "csr-approver",
        "--verb=get,list,update",
        "--resource=certificatesigningrequests,certificatesigningrequests/approval",
    ]);
    server.ok(&[
        "create",
        "clusterrolebinding",
        "alice-csr",
        "--clusterrole=csr-approver",
        "--user=alice",
    ]);
    let out = server.kubectl(&["certificate", "approve", "carol", "--as", "alice"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("user not permitted to approve requests with signerName \"kubernetes.io/kube-apiserver-client\""), "{stderr}");
    server.ok(&["certificate", "approve", "carol"]);
    let issued = wait_csr(&server, "carol", "{.status.certificate}");
    use base64::Engine;
    let cert = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(issued).unwrap())
        .unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    let user = format!(
        "{{client-certificate-data: {}, client-key-data: {}}}",
        b64(&cert),
        b64(&std::fs::read_to_string(&key).unwrap())
    );
    let carol = common::kubeconfig_as(&server, "carol", &user);
    let (ok, who, err) = kubectl_as(
        &server,
        &carol,
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}"],
    );
    assert!(ok, "{err}");
    assert!(who.starts_with("carol ") && who.contains("devs"), "{who}");

    // system:masters is never handed out this way.
    let (_, masters) = openssl_request(&dir, "root", "/CN=root/O=system:masters", "");
    let out = server.kubectl_with(
        common::tool("kubectl"),
        &["create", "-f", "-"],
        Some(&csr_manifest(
            "root",
            &masters,
            "kubernetes.io/kube-apiserver-client",
            &["client auth"],
        )),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"
    ));

    // A node's renewal of its own client certificate is approved and signed by itself.
    let (_, node) = openssl_request(&dir, "n1", "/CN=system:node:n1/O=system:nodes", "");
    server.ok_stdin(
        &["create", "-f", "-", "--as", "system:node:n1", "--as-group", "system:nodes"],
        &csr_manifest(
            "node-n1",
            &node,
            "kubernetes.io/kube-apiserver-client-kubelet",
            &["digital signature", "client auth"],
        ),
    );
    wait_csr(&server, "node-n1", "{.status.certificate}");
    assert_eq!(
        server.ok(&["get", "csr", "node-n1", "-o", "jsonpath={.status.conditions[0].reason}"]),
        "AutoApproved"
    );
    // Asked by another node for that node's name: not approved by itself.
    let (_, other) = openssl_request(&dir, "n2", "/CN=system:node:n2/O=system:nodes", "");
    server.ok_stdin(
        &["create", "-f", "-", "--as", "system:node:n3", "--as-group", "system:nodes"],
        &csr_manifest(
            "node-n2",
            &other,
            "kubernetes.io/kube-apiserver-client-kubelet",
            &["digital signature", "client auth"],
        ),
    );

    // A serving request without names breaks its signer's rules: approved, then Failed.
    let (_, serving) = openssl_request(&dir, "s1", "/CN=system:node:n1/O=system:nodes", "");
    server.ok_stdin(
        &["create", "-f", "-"],
        &csr_manifest(
            "serving",
            &serving,
            "kubernetes.io/kubelet-serving",
            &["digital signature", "server auth"],
        ),
    );
    server.ok(&["certificate", "approve", "serving"]);
    let failed = wait_csr(&server, "serving", "{.status.conditions[?(@.type==\"Failed\")].reason}");
    assert_eq!(failed, "SignerValidationFailure");
    assert!(server.ok(&["get", "csr", "serving"]).contains("Approved,Failed"));
    assert_eq!(
        server.ok(&["get", "csr", "node-n2", "-o", "jsonpath={.status.conditions}"]),
        "",
        "n3's request for n2 was approved"
    );
}

/// Runs `openssl ARGS`, asserting success; returns stdout.
fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.unwrap_or_default()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An RSA signing key made with openssl: (key file, its JWK with `kid`).
fn rsa_jwk(dir: &std::path::Path, kid: &str) -> (std::path::PathBuf, serde_json::Value) {
    let key = dir.join(format!("{kid}.key"));
    openssl(&["genrsa", "-out", key.to_str().unwrap(), "2048"], None);
    let modulus = String::from_utf8(openssl(
        &["rsa", "-in", key.to_str().unwrap(), "-noout", "-modulus"],
        None,
    ))
    .unwrap();
    let hex = modulus.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let jwk = serde_json::json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "n": b64url(&n), "e": "AQAB"});
    (key, jwk)
}

/// An RS256 JWT of `claims` signed by `key` (openssl), naming `kid`.
fn rs256(key: &std::path::Path, kid: &str, claims: &serde_json::Value) -> String {
    let header = b64url(
        serde_json::json!({"alg": "RS256", "kid": kid, "typ": "JWT"}).to_string().as_bytes(),
    );
    let payload = b64url(claims.to_string().as_bytes());
    let signed = format!("{header}.{payload}");
    let signature =
        openssl(&["dgst", "-sha256", "-sign", key.to_str().unwrap()], Some(signed.as_bytes()));
    format!("{signed}.{}", b64url(&signature))
}

#[test]
fn oidc_id_tokens_from_the_issuer_authenticate_with_their_groups() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The fake issuer: discovery and keys over HTTPS (Python's server; a CA and a serving
    // certificate made with openssl).
    let (ca_key, ca_cert) = (d.join("ca.key"), d.join("ca.crt"));
    let (tls_key, tls_cert, tls_csr, ext) =
        (d.join("tls.key"), d.join("tls.crt"), d.join("tls.csr"), d.join("ext"));
    let path = |p: &std::path::PathBuf| p.to_str().unwrap().to_owned();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            &path(&ca_key),
            "-out",
            &path(&ca_cert),
            "-subj",
            "/CN=issuer-ca",
        ],
        None,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &path(&tls_key),
            "-out",
            &path(&tls_csr),
            "-subj",
            "/CN=issuer",
        ],
        None,
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &path(&tls_csr),
            "-CA",
            &path(&ca_cert),
            "-CAkey",
            &path(&ca_key),
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &path(&tls_cert),
            "-extfile",
            &path(&ext),
        ],
        None,
    );
    let port = common::free_port();
    let issuer = format!("https://127.0.0.1:{port}");
    let root = d.join("www");
    std::fs::create_dir_all(root.join(".well-known")).unwrap();
    std::fs::write(
        root.join(".well-known/openid-configuration"),
        serde_json::json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}).to_string(),
    )
    .unwrap();
    let (key1, jwk1) = rsa_jwk(d, "k1");
    let (key2, jwk2) = rsa_jwk(d, "k2");
    std::fs::write(root.join("jwks"), serde_json::json!({"keys": [jwk1.clone()]}).to_string())
        .unwrap();
    let script = r#"
import http.server, os, ssl, sys
port, root, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.chdir(root)
class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass
    def guess_type(self, path): return "application/json"
server = http.server.HTTPServer(("127.0.0.1", port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#;
    let mut fake = std::process::Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .args([&root, &tls_cert, &tls_key])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(fake.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    let _fake = Kill(fake);
    assert_eq!(ready.trim(), "ready");

    let server = KrustServer::start(&[
        "--kube-apiserver-arg",
        &format!("oidc-issuer-url={issuer}"),
        "--kube-apiserver-arg",
        "oidc-client-id=krust",
        "--kube-apiserver-arg",
        "oidc-username-claim=email",
        "--kube-apiserver-arg",
        "oidc-groups-claim=groups",
        "--kube-apiserver-arg",
        "oidc-groups-prefix=oidc:",
        "--kube-apiserver-arg",
        &format!("oidc-ca-file={}", ca_cert.display()),
    ]);
    server.ok(&["create", "clusterrole", "pod-reader", "--verb=get,list", "--resource=pods"]);
    server.ok(&[
        "create",
        "clusterrolebinding",
        "oidc-devs",
        "--clusterrole=pod-reader",
        "--group=oidc:dev",
    ]);
    let now = jiff::Timestamp::now().as_second();
    let claims = |email: &str, aud: &str, exp: i64| {
        serde_json::json!({"iss": issuer, "aud": aud, "sub": "1234", "email": email, "email_verified": true,
                           "groups": ["dev"], "iat": now, "exp": exp})
    };
    let as_token =
        |token: &str, args: &[&str]| kubectl_as(&server, &token_kubeconfig(&server, token), args);
    let jane = rs256(&key1, "k1", &claims("jane@example.com", "krust", now + 600));
    let (ok, who, err) = as_token(
        &jane,
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}"],
    );
    assert!(ok, "{err}");
    assert_eq!(who, "jane@example.com [\"oidc:dev\",\"system:authenticated\"]");
    // What her group's binding grants, and nothing more.
    assert!(as_token(&jane, &["get", "pods"]).0);
    let (ok, _, err) = as_token(&jane, &["create", "configmap", "x"]);
    assert!(
        !ok && err.contains("User \"jane@example.com\" cannot create resource \"configmaps\""),
        "{err}"
    );

    // Refused: expired, for another client, signed by a key the issuer does not publish,
    // unsigned, altered.
    for (what, token) in [
        ("expired", rs256(&key1, "k1", &claims("jane@example.com", "krust", now - 10))),
        ("other client", rs256(&key1, "k1", &claims("jane@example.com", "other", now + 600))),
        ("unpublished key", rs256(&key2, "k1", &claims("jane@example.com", "krust", now + 600))),
        (
            "alg none",
            format!("{}.{}.", b64url(br#"{"alg":"none"}"#), jane.split('.').nth(1).unwrap()),
        ),
        ("altered", {
            let parts: Vec<&str> = jane.split('.').collect();
            format!(
                "{}.{}.{}",
                parts[0],
                b64url(claims("root@example.com", "krust", now + 600).to_string().as_bytes()),
                parts[2]
            )
        }),
    ] {
        let (ok, _, err) = as_token(&token, &["auth", "whoami"]);
        assert!(!ok && err.contains("Unauthorized"), "{what}: {err}");
    }

    // The issuer rotates its key: a token of the new key works once the keys are fetched
    // again (the cache refetches on an unknown key, at most every ten seconds).
    std::fs::write(root.join("jwks"), serde_json::json!({"keys": [jwk1, jwk2]}).to_string())
        .unwrap();
    let rotated = rs256(&key2, "k2", &claims("joe@example.com", "krust", now + 600));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !as_token(&rotated, &["auth", "whoami"]).0 {
        assert!(std::time::Instant::now() < deadline, "the new key was never fetched");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// `openssl x509 -noout ARGS` of the certificate the server at `port` presents now.
fn served_certificate(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    let mut x509 = vec!["x509", "-noout"];
    x509.extend_from_slice(args);
    String::from_utf8(openssl(&x509, Some(&out.stdout))).unwrap().trim().to_owned()
}

/// Unix seconds of `openssl x509 -enddate -dateopt iso_8601` output.
fn end_of(enddate: &str) -> i64 {
    enddate
        .trim()
        .trim_start_matches("notAfter=")
        .replace(' ', "T")
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_second()
}

#[test]
fn the_servers_own_certificates_are_renewed_without_a_restart() {
    // 20 s certificates: renewed at 16 s, live.
    let server = KrustServer::start(&["--serving-certificate-validity=20s"]);
    let pid = server.pid();
    let first_serial = served_certificate(server.port, &["-serial"]);
    let first_end = end_of(&served_certificate(server.port, &["-enddate", "-dateopt", "iso_8601"]));
    let first_kubeconfig = std::fs::read_to_string(&server.kubeconfig).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while served_certificate(server.port, &["-serial"]) == first_serial
        || std::fs::read_to_string(&server.kubeconfig).unwrap() == first_kubeconfig
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the serving or admin certificate was not renewed"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    // Past the first certificates' end, kubectl (a new connection each time, checking the
    // server's certificate and presenting the admin one from the kubeconfig) still works,
    // and it is the same server process.
    while jiff::Timestamp::now().as_second() <= first_end + 1 {
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    server.ok(&["get", "namespaces"]);
    assert_eq!(server.pid(), pid);
}

/// Servers sharing one etcd (HA) with the cluster's token share its CA, ServiceAccount key and
/// encryption configuration: certificates and tokens of one work with the other, a Secret
/// written through one reads through the other, also after a key rotation; a server with
/// another token is refused at start.
#[test]
fn servers_sharing_a_store_read_each_others_secrets() {
    let etcd = storage::testing::EtcdServer::start().expect("etcd-server must be installed");
    let endpoint = format!("--datastore-endpoint={}", etcd.endpoint);
    let first = KrustServer::start(&[&endpoint, "--token=shared-cluster-token"]);
    let second = KrustServer::start(&[&endpoint, "--token=shared-cluster-token"]);
    create_marked_secret(&first, "db-password");
    assert_eq!(
        second.ok(&["get", "secret", "db-password", "-o", "jsonpath={.data.password}"]),
        b64(MARK)
    );
    // One CA and one ServiceAccount key for the cluster: the first server's kubeconfig and
    // a token it issued work against the second.
    let ca = |s: &KrustServer| {
        let text = std::fs::read_to_string(&s.kubeconfig).unwrap();
        text.lines().find(|l| l.contains("certificate-authority-data")).unwrap().to_owned()
    };
    assert_eq!(ca(&first), ca(&second), "the servers have different CAs");
    let crossed = first.dir.path().join("crossed.yaml");
    std::fs::write(
        &crossed,
        std::fs::read_to_string(&first.kubeconfig)
            .unwrap()
            .replace(&first.port.to_string(), &second.port.to_string()),
    )
    .unwrap();
    let (ok, who, err) = kubectl_as(
        &second,
        &crossed,
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
    );
    assert!(ok && who == "system:admin", "{err}");
    first.ok(&["create", "serviceaccount", "robot"]);
    let token = first.ok(&["create", "token", "robot"]);
    let (ok, who, err) = kubectl_as(
        &second,
        &token_kubeconfig(&second, token.trim()),
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
    );
    assert!(ok && who == "system:serviceaccount:default:robot", "{err}");
    let (ok, out) = secrets_encrypt(&first, &["rotate-keys"]);
    assert!(ok && out.contains("Stage: reencrypt_finished"), "{out}");
    let written =
        first.ok(&["get", "secret", "db-password", "-o", "jsonpath={.metadata.resourceVersion}"]);
    assert!(!written.is_empty());
    // The second server takes the rotated configuration within seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, status) = secrets_encrypt(&second, &["status"]);
        if status.contains("reencrypt_finished") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotation did not reach the second server: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    create_marked_secret(&second, "api-key");
    assert_eq!(
        first.ok(&["get", "secret", "api-key", "-o", "jsonpath={.data.password}"]),
        b64(MARK)
    );
    assert_eq!(
        second.ok(&["get", "secret", "db-password", "-o", "jsonpath={.data.password}"]),
        b64(MARK)
    );

    // Another cluster's token cannot join this store.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_krust"))
        .args(["server", "--disable-agent", "--bind-address=127.0.0.1", &endpoint, "--token=other"])
        .arg(format!("--https-listen-port={}", common::free_port()))
        .arg(format!("--dns-port={}", common::free_port()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--write-kubeconfig")
        .arg(dir.path().join("kc.yaml"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("start every server sharing a store with the same --token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn expired_bootstrap_tokens_are_deleted() {
    let server = KrustServer::start_control_plane(&[]);
    let (ok, created) = krust_token(&server, &["create", "--ttl", "2s"]);
    assert!(ok, "{created}");
    let (_, kept) = krust_token(&server, &["create", "--ttl", "1h"]);
    let id =
        |full: &str| full.trim().split("::").nth(1).unwrap().split('.').next().unwrap().to_owned();
    let (short, long) = (id(&created), id(&kept));
    let secrets = || server.ok(&["get", "secrets", "-n", "kube-system", "-o", "name"]);
    assert!(secrets().contains(&format!("bootstrap-token-{short}")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while secrets().contains(&format!("bootstrap-token-{short}")) {
        assert!(std::time::Instant::now() < deadline, "the expired token's Secret was not deleted");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(secrets().contains(&format!("bootstrap-token-{long}")), "a live token was deleted");
}
