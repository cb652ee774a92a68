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
