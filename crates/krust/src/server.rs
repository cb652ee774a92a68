//! `krust server`: flags (named as k3s names them), start-up and shutdown of the control plane.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use apiserver::cidr::Ipv4Cidr;
use apiserver::handler::ApiServer;
use apiserver::resources::Registry;
use apiserver::rest::Rest;
use clap::{Args, Subcommand};
use pki::Pki;
use storage::SharedStore;

/// Flags of `krust server`.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Folder holding all state: certificates, the embedded store, the join token.
    #[arg(long, default_value = "/var/lib/krust", env = "KRUST_DATA_DIR")]
    data_dir: PathBuf,
    /// Address the API server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// HTTPS port of the API server.
    #[arg(long, default_value_t = 6443)]
    https_listen_port: u16,
    /// Where to write the admin kubeconfig (mode 0600).
    #[arg(long, default_value = "/etc/krust/krust.yaml", env = "KRUST_KUBECONFIG_OUTPUT")]
    write_kubeconfig: PathBuf,
    /// Store: empty for the embedded store, or etcd endpoints `http://host:2379[,...]`.
    #[arg(long, default_value = "", env = "KRUST_DATASTORE_ENDPOINT")]
    datastore_endpoint: String,
    /// Do not run a node agent in this process.
    #[arg(long)]
    disable_agent: bool,
    /// Flags of the in-process node agent.
    #[command(flatten)]
    agent: crate::agent::AgentArgs,
    /// Do not run the scheduler in this process.
    #[arg(long)]
    disable_scheduler: bool,
    /// Do not run the controller manager in this process.
    #[arg(long)]
    disable_controller_manager: bool,
    /// Flags of the in-process scheduler.
    #[command(flatten)]
    scheduler: crate::control::SchedulerArgs,
    /// Flags of the in-process controller manager.
    #[command(flatten)]
    manager: crate::control::ManagerArgs,
    /// Pod network (IPv4 CIDR) nodes get their pod CIDRs from.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// Service network (IPv4 CIDR); its first address is the `kubernetes` Service.
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cidr: String,
    /// The cluster DNS Service's address (default: the tenth address of the service network).
    #[arg(long)]
    cluster_dns: Option<Ipv4Addr>,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// How pod networks reach each other across nodes: `host-gw` (routes; nodes share a
    /// link), `vxlan` (an overlay), or `none`.
    #[arg(long, default_value = "host-gw", value_parser = ["host-gw", "vxlan", "none"])]
    flannel_backend: String,
    /// Run no cluster DNS (pods use the host's resolver).
    #[arg(long)]
    disable_dns: bool,
    /// Port the cluster DNS listens on at the server's address (its Service stays on 53).
    #[arg(long, default_value_t = 53, hide = true)]
    dns_port: u16,
    /// A resolver for names outside the cluster, `IP:PORT` (repeatable; default: the
    /// host's `/etc/resolv.conf`).
    #[arg(long = "dns-upstream", hide = true)]
    dns_upstreams: Vec<SocketAddr>,
    /// Ports NodePort and LoadBalancer Services get their node ports from.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Shared secret nodes join with; generated and kept in the data dir when absent.
    #[arg(long, env = "KRUST_TOKEN")]
    token: Option<String>,
    /// Extra names or addresses for the serving certificate (repeatable), e.g. the address
    /// agents in other network namespaces reach this server on.
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// Static bearer tokens, upstream's CSV format: `token,user,uid[,"group1,group2"]`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Pod Security levels of namespaces without `pod-security.kubernetes.io/` labels:
    /// `MODE=LEVEL[:VERSION]`, comma-separated, over krust's default
    /// (`enforce=baseline,audit=restricted,warn=restricted`; `kube-system` is exempt).
    /// `enforce=privileged` admits everything, as upstream's default does.
    #[arg(long, default_value = "", value_parser = parse_pod_security_default)]
    pod_security_default: apiserver::admission::pod_security::PodSecurityConfig,
    /// Folders a PersistentVolume's hostPath or local path must lie under (comma-separated;
    /// none: any path, as upstream).
    #[arg(long, value_delimiter = ',')]
    local_storage_allowed_paths: Vec<String>,
    /// An API server tunable, `key=value` (repeatable): `authorization-mode` (`Node,RBAC`,
    /// the default, or `AlwaysAllow` to let every authenticated client do everything);
    /// `encryption-provider-config` (an `EncryptionConfiguration` file of your own, instead
    /// of the one krust generates in `<data-dir>/server/cred/`).
    #[arg(long = "kube-apiserver-arg", value_name = "KEY=VALUE", value_parser = parse_apiserver_arg)]
    kube_apiserver_args: Vec<ApiServerArg>,
    #[arg(skip)]
    authorization_mode: AuthorizationMode,
    #[arg(skip)]
    encryption_provider_config: Option<PathBuf>,
    #[arg(skip)]
    audit_policy_file: Option<PathBuf>,
    #[arg(skip)]
    audit_log: Option<apiserver::audit::LogConfig>,
    /// Interval of the store's compaction (history older than one interval is discarded).
    #[arg(long, default_value = "5m", value_parser = crate::flags::parse_duration)]
    compaction_interval: Duration,
    /// Most non-mutating requests in flight at once (watches, logs and streams are not
    /// counted); beyond it requests get 429 with Retry-After. 0 = no limit.
    #[arg(long, default_value_t = 400)]
    pub(crate) max_requests_inflight: usize,
    /// Most mutating requests in flight at once; beyond it requests get 429. 0 = no limit.
    #[arg(long, default_value_t = 200)]
    pub(crate) max_mutating_requests_inflight: usize,
    /// Most long-running requests (watches, logs, exec, attach, port-forward) at once, a
    /// budget apart from the two above (krust's own; upstream counts them in APF seats).
    #[arg(long, default_value_t = apiserver::connections::MAX_LONG_RUNNING)]
    pub(crate) max_long_running_requests: usize,
    /// How long a node's client certificate is valid; agents renew theirs at 80% of it
    /// (hidden: tests shorten it to see a renewal).
    #[arg(long, default_value = "8760h", value_parser = crate::flags::parse_duration, hide = true)]
    node_certificate_validity: Duration,
    /// How long the API server's serving and admin certificates are valid; they are issued
    /// again, without a restart, at 80% of it (hidden: tests shorten it to see a renewal).
    #[arg(long, default_value = "8760h", value_parser = crate::flags::parse_duration, hide = true)]
    serving_certificate_validity: Duration,
    /// How often the built-in metrics API scrapes every node's resource usage
    /// (metrics-server's `--metric-resolution`); `kubectl top` and the HPA read it.
    #[arg(long, default_value = "15s", value_parser = crate::flags::parse_duration)]
    metrics_resolution: Duration,
    /// Size quota of the embedded store, in MiB.
    #[arg(long, default_value_t = 2048)]
    datastore_quota_mib: u64,
}

/// How requests are authorized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum AuthorizationMode {
    /// RBAC (and, for node agents, the Node authorizer).
    #[default]
    Rbac,
    /// Every authenticated client may do everything.
    AlwaysAllow,
}

/// One `--kube-apiserver-arg`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ApiServerArg {
    AuthorizationMode(AuthorizationMode),
    EncryptionProviderConfig(PathBuf),
    AuditPolicyFile(PathBuf),
    AuditLogPath(PathBuf),
    AuditLogMaxSize(u64),
    AuditLogMaxAge(u64),
    AuditLogMaxBackup(usize),
    Oidc(String, String),
}

fn parse_apiserver_arg(arg: &str) -> Result<ApiServerArg, String> {
    let (key, value) =
        arg.trim_start_matches("--").split_once('=').ok_or("want KEY=VALUE".to_owned())?;
    match key {
        "authorization-mode" => match value {
            "Node,RBAC" | "RBAC,Node" | "RBAC" => {
                Ok(ApiServerArg::AuthorizationMode(AuthorizationMode::Rbac))
            }
            "AlwaysAllow" => Ok(ApiServerArg::AuthorizationMode(AuthorizationMode::AlwaysAllow)),
            other => Err(format!(
                "authorization-mode {other:?} is not supported (Node,RBAC or AlwaysAllow are)"
            )),
        },
        "encryption-provider-config" => Ok(ApiServerArg::EncryptionProviderConfig(value.into())),
        "audit-policy-file" => Ok(ApiServerArg::AuditPolicyFile(value.into())),
        "audit-log-path" => Ok(ApiServerArg::AuditLogPath(value.into())),
        "audit-log-maxsize" | "audit-log-maxage" | "audit-log-maxbackup" => {
            let n: u64 =
                value.parse().map_err(|_| format!("{key} wants a number, not {value:?}"))?;
            Ok(match key {
                "audit-log-maxsize" => ApiServerArg::AuditLogMaxSize(n),
                "audit-log-maxage" => ApiServerArg::AuditLogMaxAge(n),
                _ => ApiServerArg::AuditLogMaxBackup(usize::try_from(n).unwrap_or(usize::MAX)),
            })
        }
        "oidc-issuer-url"
        | "oidc-client-id"
        | "oidc-username-claim"
        | "oidc-username-prefix"
        | "oidc-groups-claim"
        | "oidc-groups-prefix"
        | "oidc-ca-file"
        | "oidc-signing-algs"
        | "oidc-required-claim" => Ok(ApiServerArg::Oidc(key.to_owned(), value.to_owned())),
        other => Err(format!(
            "{other:?} is not supported (authorization-mode, encryption-provider-config, \
             audit-policy-file, audit-log-{{path,maxsize,maxage,maxbackup}} and oidc-* are)"
        )),
    }
}

/// The OIDC authenticator's settings from the `oidc-*` arguments (none without an issuer).
fn oidc_config(args: &[(String, String)]) -> anyhow::Result<Option<apiserver::oidc::OidcConfig>> {
    let Some((_, issuer)) = args.iter().rev().find(|(k, _)| k == "oidc-issuer-url") else {
        if let Some((key, _)) = args.first() {
            anyhow::bail!("{key} needs oidc-issuer-url");
        }
        return Ok(None);
    };
    let mut config = apiserver::oidc::OidcConfig::new(issuer);
    for (key, value) in args {
        match key.as_str() {
            "oidc-client-id" => config.client_id = value.clone(),
            "oidc-username-claim" => config.username_claim = value.clone(),
            "oidc-username-prefix" => config.username_prefix = Some(value.clone()),
            "oidc-groups-claim" => config.groups_claim = Some(value.clone()),
            "oidc-groups-prefix" => config.groups_prefix = value.clone(),
            "oidc-ca-file" => config.ca_file = Some(value.into()),
            "oidc-signing-algs" => {
                config.signing_algs = value.split(',').map(|a| a.trim().to_owned()).collect()
            }
            "oidc-required-claim" => {
                let (claim, want) = value
                    .split_once('=')
                    .with_context(|| format!("oidc-required-claim {value:?}: want CLAIM=VALUE"))?;
                config.required_claims.push((claim.to_owned(), want.to_owned()));
            }
            _ => {}
        }
    }
    config.validate().map_err(|e| anyhow::anyhow!(e))?;
    Ok(Some(config))
}

fn parse_pod_security_default(
    text: &str,
) -> Result<apiserver::admission::pod_security::PodSecurityConfig, String> {
    apiserver::admission::pod_security::PodSecurityConfig::default().with_defaults(text)
}

fn load_or_create_token(dir: &Path, given: Option<&str>) -> anyhow::Result<String> {
    let path = dir.join("token");
    if let Some(token) = given {
        pki::write_private(&path, token.as_bytes())?;
        return Ok(token.to_owned());
    }
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(existing.trim().to_owned());
    }
    use rand::Rng;
    let token: String =
        rand::rng().sample_iter(rand::distr::Alphanumeric).take(48).map(char::from).collect();
    pki::write_private(&path, token.as_bytes())?;
    Ok(token)
}

async fn open_store(args: &ServerArgs) -> anyhow::Result<SharedStore> {
    if args.datastore_endpoint.is_empty() {
        let mut config =
            storage::embedded::Config::with_dir(args.data_dir.join("server").join("db"));
        config.quota_bytes = args.datastore_quota_mib << 20;
        let store =
            tokio::task::spawn_blocking(move || storage::embedded::EmbeddedStore::open(config))
                .await??;
        Ok(Arc::new(store))
    } else {
        let store = storage::etcd::EtcdStore::connect(&args.datastore_endpoint)
            .await
            .with_context(|| format!("connecting to etcd at {}", args.datastore_endpoint))?;
        Ok(Arc::new(store))
    }
}

/// Runs the control plane until SIGINT or SIGTERM.
pub(crate) async fn run(mut args: ServerArgs) -> anyhow::Result<()> {
    // Upstream's defaults: 100 MiB files, backups kept without a limit.
    let mut oidc: Vec<(String, String)> = Vec::new();
    let mut audit_log = apiserver::audit::LogConfig {
        path: PathBuf::new(),
        max_size_mib: 100,
        max_age_days: 0,
        max_backups: 0,
    };
    for arg in &args.kube_apiserver_args {
        match arg {
            ApiServerArg::AuthorizationMode(mode) => args.authorization_mode = *mode,
            ApiServerArg::EncryptionProviderConfig(path) => {
                args.encryption_provider_config = Some(path.clone())
            }
            ApiServerArg::AuditPolicyFile(path) => args.audit_policy_file = Some(path.clone()),
            ApiServerArg::AuditLogPath(path) => audit_log.path = path.clone(),
            ApiServerArg::AuditLogMaxSize(n) => audit_log.max_size_mib = *n,
            ApiServerArg::AuditLogMaxAge(n) => audit_log.max_age_days = *n,
            ApiServerArg::AuditLogMaxBackup(n) => audit_log.max_backups = *n,
            ApiServerArg::Oidc(key, value) => oidc.push((key.clone(), value.clone())),
        }
    }
    if !audit_log.path.as_os_str().is_empty() {
        args.audit_log = Some(audit_log);
    }
    let oidc = oidc_config(&oidc)?;
    let service_cidr = Ipv4Cidr::parse(&args.service_cidr)
        .with_context(|| format!("--service-cidr {:?} is not an IPv4 CIDR", args.service_cidr))?;
    let cluster_cidr = Ipv4Cidr::parse(&args.cluster_cidr)
        .with_context(|| format!("--cluster-cidr {:?} is not an IPv4 CIDR", args.cluster_cidr))?;
    let node_ports = apiserver::admission::PortRange::parse(&args.service_node_port_range)
        .with_context(|| {
            format!(
                "--service-node-port-range {:?} is not a port range",
                args.service_node_port_range
            )
        })?;
    let first_service_ip = service_cidr.nth(1).context("service CIDR too small")?;
    let dns_ip = match args.cluster_dns {
        Some(ip) => ip,
        None => service_cidr.nth(10).context("service CIDR too small for a DNS address")?,
    };
    let server_dir = args.data_dir.join("server");
    std::fs::create_dir_all(&server_dir)
        .with_context(|| format!("creating {}", server_dir.display()))?;
    // The server's keys, tokens and store are under it: only the owner may enter.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&server_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", server_dir.display()))?;
    }
    let secret = load_or_create_token(&server_dir, args.token.as_deref())?;
    let addresses = crate::host::host_addresses();
    let mut sans = pki::default_sans(&addresses, Some(IpAddr::V4(first_service_ip)));
    if !args.bind_address.is_unspecified() && !sans.contains(&args.bind_address.to_string()) {
        sans.push(args.bind_address.to_string());
    }
    for san in &args.tls_san {
        if !sans.contains(san) {
            sans.push(san.clone());
        }
    }
    // Servers sharing a store share the cluster CA and the ServiceAccount key through it:
    // adopted before the PKI is loaded, published by the first server.
    let raw_store = open_store(&args).await?;
    let tls_dir = server_dir.join("tls");
    let shared_files: Vec<apiserver::cluster_bootstrap::File> = vec![
        ("ca.crt", tls_dir.join("ca.crt")),
        ("ca.key", tls_dir.join("ca.key")),
        ("service-account.key", tls_dir.join("service-account.key")),
    ];
    let adopted = apiserver::cluster_bootstrap::adopt(raw_store.as_ref(), &secret, &shared_files)
        .await
        .context("cluster bootstrap data")?;
    let mut pki = Pki::load_or_create_for(&tls_dir, &sans, args.serving_certificate_validity)?;
    pki::jwt::SigningKey::load_or_create(&tls_dir.join("service-account.key"))?;
    if !adopted
        && !apiserver::cluster_bootstrap::publish(raw_store.as_ref(), &secret, &shared_files)
            .await
            .context("cluster bootstrap data")?
    {
        // Another server published first, meanwhile: take its CA and keys.
        apiserver::cluster_bootstrap::adopt(raw_store.as_ref(), &secret, &shared_files)
            .await
            .context("cluster bootstrap data")?;
        pki = Pki::load_or_create_for(&tls_dir, &sans, args.serving_certificate_validity)?;
    }
    // Secrets (or what the configuration names) are encrypted on their way into the store:
    // everything but the compactor goes through `store`, never `raw_store`.
    let encryption = apiserver::encryption::Encryption::load(
        raw_store.clone(),
        args.encryption_provider_config.as_deref(),
        &server_dir.join("cred").join("encryption-config.json"),
    )
    .context("encryption at rest")?;
    encryption.share(&secret).await.context("encryption at rest")?;
    let store = encryption.store();

    // Every long-running task stops when this turns true (SIGTERM or Ctrl-C).
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    // Rotations other servers sharing the store make reach this one.
    let encryption_follower =
        tokio::spawn(crate::until(shutdown_rx.clone(), encryption.clone().follow()));
    let compactor_stats = Arc::new(storage::compactor::CompactorStats::default());
    let compactor = tokio::spawn(crate::until(
        shutdown_rx.clone(),
        storage::compactor::run(raw_store, args.compaction_interval, compactor_stats.clone()),
    ));

    let endpoint_ip = if !args.bind_address.is_unspecified() && !args.bind_address.is_loopback() {
        args.bind_address
    } else {
        crate::host::default_address().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    };
    let registry = Arc::new(Registry::new());
    let rbac = Arc::new(apiserver::rbac::Rbac::new());
    let node_authorizer = Arc::new(apiserver::node_authorizer::NodeAuthorizer::new(rbac.clone()));
    let rest = Arc::new(Rest {
        store: store.clone(),
        registry: registry.clone(),
        admission: apiserver::admission::Admission::new(
            service_cidr,
            node_ports,
            Some(cluster_cidr),
            (args.authorization_mode != AuthorizationMode::AlwaysAllow).then(|| rbac.clone()),
            Some(args.pod_security_default.clone()),
            args.local_storage_allowed_paths.clone(),
        ),
    });
    apiserver::crd::sync(&rest).await?;
    let crd_follower =
        tokio::spawn(crate::until(shutdown_rx.clone(), apiserver::crd::follow(rest.clone())));
    // Service address and node port claims whose Service is gone go back to their range.
    let allocation_repair = {
        let rest = rest.clone();
        tokio::spawn(crate::until(shutdown_rx.clone(), async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                match apiserver::admission::allocations::repair(rest.as_ref(), now).await {
                    Ok(done) if done.released + done.claimed > 0 => {
                        tracing::debug!(?done, "service allocations repaired")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e.message, "repairing service allocations failed")
                    }
                }
            }
        }))
    };
    let node_proxy = node_proxy(&pki)?;
    let resource_metrics = Arc::new(apiserver::resource_metrics::Samples::default());
    tokio::spawn(crate::until(
        shutdown_rx.clone(),
        apiserver::scraper::run(
            rest.clone(),
            node_proxy.clone(),
            resource_metrics.clone(),
            args.metrics_resolution.max(Duration::from_secs(1)),
        ),
    ));
    let api = Arc::new(ApiServer {
        resource_metrics,
        rest: rest.clone(),
        registry,
        authorizer: match args.authorization_mode {
            AuthorizationMode::AlwaysAllow => Box::new(apiserver::auth::AllowAuthenticated),
            AuthorizationMode::Rbac => Box::new(node_authorizer.clone()),
        },
        metrics: Default::default(),
        compactor: compactor_stats,
        advertise_address: format!("{endpoint_ip}:{}", args.https_listen_port),
        node_proxy: Some(node_proxy.clone()),
        node_join: Some(apiserver::join::NodeJoin {
            pki: pki.clone(),
            secret,
            cluster: serde_json::json!({
                "clusterCIDR": args.cluster_cidr,
                "clusterDNS": (!args.disable_dns).then(|| dns_ip.to_string()),
                "clusterDomain": args.cluster_domain,
                "flannelBackend": args.flannel_backend,
            }),
            failures: Default::default(),
            node_certificate_validity: args.node_certificate_validity,
        }),
        inflight: apiserver::connections::InflightLimits::with_long_running(
            args.max_requests_inflight,
            args.max_mutating_requests_inflight,
            args.max_long_running_requests,
        ),
        token_file: match &args.token_auth_file {
            Some(path) => Some(
                apiserver::auth::TokenFile::parse(
                    &std::fs::read_to_string(path)
                        .with_context(|| format!("reading --token-auth-file {}", path.display()))?,
                )
                .map_err(|e| anyhow::anyhow!("--token-auth-file {}: {e}", path.display()))?,
            ),
            None => None,
        },
        tokens: Some(Arc::new(apiserver::tokens::ServiceAccountTokens::new(
            pki::jwt::SigningKey::load_or_create(
                &server_dir.join("tls").join("service-account.key"),
            )?,
            &format!("https://kubernetes.default.svc.{}", args.cluster_domain),
        ))),
        encryption: Some(encryption),
        oidc: match oidc {
            Some(config) => {
                Some(apiserver::oidc::Oidc::new(config).map_err(|e| anyhow::anyhow!(e))?)
            }
            None => None,
        },
        audit: match &args.audit_log {
            None => None,
            Some(config) => {
                let policy = match &args.audit_policy_file {
                    Some(path) => apiserver::audit::Policy::parse(
                        &std::fs::read_to_string(path).with_context(|| {
                            format!("reading audit-policy-file {}", path.display())
                        })?,
                    )
                    .map_err(|e| anyhow::anyhow!("audit-policy-file {}: {e}", path.display()))?,
                    // A log without a policy records every request's metadata.
                    None => apiserver::audit::Policy::metadata_for_all(),
                };
                Some(
                    apiserver::audit::AuditLog::start(policy, config.clone()).with_context(
                        || format!("opening the audit log {}", config.path.display()),
                    )?,
                )
            }
        },
    });
    let node_token = server_dir.join("node-token");
    if let Some(join) = &api.node_join {
        pki::write_private(&node_token, join.token().as_bytes())?;
    }
    apiserver::server::bootstrap(
        &api,
        &endpoint_ip.to_string(),
        args.https_listen_port,
        &first_service_ip.to_string(),
    )
    .await?;
    // Upstream's bootstrap policy, then the authorizer's view of every role and binding,
    // before the first request is served.
    let reconciled = apiserver::policy_reconcile::reconcile(&rest)
        .await
        .map_err(|e| anyhow::anyhow!("reconciling the RBAC bootstrap policy: {}", e.message))?;
    tracing::info!(?reconciled, "RBAC bootstrap policy reconciled");
    let rbac_revision = rbac.load(&store).await.context("loading RBAC objects")?;
    let rbac_follower = tokio::spawn(crate::until(
        shutdown_rx.clone(),
        rbac.clone().follow(store.clone(), rbac_revision),
    ));
    let graph_revision = node_authorizer.load(&store).await.context("loading the node graph")?;
    let graph_follower = tokio::spawn(crate::until(
        shutdown_rx.clone(),
        node_authorizer.clone().follow(store.clone(), graph_revision),
    ));
    // This server's endpoint lease, renewed well within its lifetime, so the `kubernetes`
    // Service lists every live API server sharing the store.
    let lease_renewal = (!endpoint_ip.is_loopback()).then(|| {
        let (api, ip, port) = (api.clone(), endpoint_ip.to_string(), args.https_listen_port);
        tokio::spawn(crate::until(shutdown_rx.clone(), async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                if let Err(e) = apiserver::server::reconcile_endpoints(&api, &ip, port, false).await
                {
                    tracing::warn!(error = %e, "renewing the API server's endpoint lease failed");
                }
            }
        }))
    });

    let addr = SocketAddr::new(args.bind_address, args.https_listen_port);
    let listener = apiserver::server::bind(addr).await?;
    let (acceptor, serving_certificate) = apiserver::server::tls_acceptor_renewable(&pki)?;
    let local = listener.local_addr()?;
    let host = if args.bind_address.is_unspecified() || args.bind_address.is_loopback() {
        "127.0.0.1".to_owned()
    } else {
        args.bind_address.to_string()
    };
    let kubeconfig = pki.admin_kubeconfig(&format!("https://{host}:{}", local.port()));
    pki::write_private(&args.write_kubeconfig, kubeconfig.as_bytes())
        .with_context(|| format!("writing kubeconfig to {}", args.write_kubeconfig.display()))?;
    tracing::info!(
        address = %local,
        kubeconfig = %args.write_kubeconfig.display(),
        datastore = if args.datastore_endpoint.is_empty() { "embedded" } else { "etcd" },
        disable_agent = args.disable_agent,
        "krust API server is ready"
    );
    // The serving and admin certificates are issued again at 80% of their life: the
    // listener presents the new one from the next handshake, the admin kubeconfig is
    // rewritten.
    let certificate_renewal = {
        let (mut pki, sans, validity) =
            (pki.clone(), sans.clone(), args.serving_certificate_validity);
        let (kubeconfig_path, url) =
            (args.write_kubeconfig.clone(), format!("https://{host}:{}", local.port()));
        let every = (validity / 20).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        tokio::spawn(crate::until(shutdown_rx.clone(), async move {
            loop {
                tokio::time::sleep(every).await;
                match pki.renew_due(&sans, validity) {
                    Ok(false) => {}
                    Ok(true) => {
                        let swapped = serving_certificate
                            .replace(&pki.serving_cert_pem, &pki.serving_key_pem)
                            .map_err(|e| e.to_string())
                            .and_then(|()| {
                                pki::write_private(
                                    &kubeconfig_path,
                                    pki.admin_kubeconfig(&url).as_bytes(),
                                )
                                .map_err(|e| e.to_string())
                            });
                        match swapped {
                            Ok(()) => tracing::info!("serving and admin certificates renewed"),
                            Err(e) => {
                                tracing::warn!(error = %e, "installing renewed certificates failed")
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the server's certificates failed")
                    }
                }
            }
        }))
    };
    println!("krust is running: API server on https://{host}:{}", local.port());
    println!("kubeconfig written to {}", args.write_kubeconfig.display());
    println!("try: KUBECONFIG={} kubectl get namespaces", args.write_kubeconfig.display());
    println!(
        "nodes join with: krust agent --server https://{endpoint_ip}:{} --token $(cat {})",
        local.port(),
        node_token.display()
    );

    let (stop_serving, serving_stopped) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(apiserver::server::serve(
        listener,
        acceptor,
        api.clone(),
        apiserver::connections::ConnectionLimits::default(),
        serving_stopped,
    ));
    let mut control_plane = None;
    if !args.disable_scheduler || !args.disable_controller_manager {
        let identities = crate::control::Identities {
            informers: in_process_client(api.clone(), "system:kube-controller-manager", &[]),
            scheduler: in_process_client(api.clone(), "system:kube-scheduler", &[]),
            controllers: controllers::Credentials(Arc::new({
                let api = api.clone();
                move |name: &str| {
                    let user = format!("system:serviceaccount:kube-system:{name}");
                    let groups = ["system:serviceaccounts", "system:serviceaccounts:kube-system"];
                    in_process_client(api.clone(), &user, &groups)
                }
            })),
        };
        control_plane = Some(crate::control::spawn_in_server(
            identities,
            (!args.disable_scheduler).then(|| args.scheduler.config()),
            (!args.disable_controller_manager).then(|| {
                let mut config = args.manager.config();
                config.root_ca = Some(pki.ca_cert_pem.clone());
                config.signing_ca = Some(Arc::new(pki.clone()));
                config
            }),
            shutdown_rx.clone(),
        ));
    }
    let mut dns_task = None;
    if !args.disable_dns {
        let listen = SocketAddr::new(endpoint_ip, args.dns_port);
        let config = dns::DnsConfig {
            listen,
            domain: args.cluster_domain.clone(),
            upstreams: if args.dns_upstreams.is_empty() {
                dns::forward::upstreams(
                    &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                    listen,
                )
            } else {
                args.dns_upstreams.clone()
            },
            service_ip: dns_ip,
        };
        let client = in_process_client(
            api.clone(),
            apiserver::rbac::components::DNS_USER,
            &["system:serviceaccounts", "system:serviceaccounts:kube-system"],
        );
        let shutdown = shutdown_rx.clone();
        dns_task = Some(tokio::spawn(async move {
            if let Err(e) = dns::run(client, config, shutdown).await {
                tracing::warn!(error = %e, "cluster DNS is not running");
            }
        }));
    }
    let mut agent_task = None;
    let mut control_plane_label = None;
    if !args.disable_agent {
        let mut config = args.agent.config(&args.data_dir, Some(endpoint_ip))?;
        config.cluster_cidr = args.cluster_cidr.clone();
        config.cluster_dns = (!args.disable_dns).then_some(dns_ip);
        config.cluster_domain = args.cluster_domain.clone();
        config.flannel_backend =
            agent::routes::Backend::parse(&args.flannel_backend).unwrap_or_default();
        // The server's own node runs the control plane, and says so as k3s's does. The
        // server sets the label itself: NodeRestriction keeps `node-role.kubernetes.io/`
        // labels from the node's own credentials.
        control_plane_label = Some(tokio::spawn(crate::until(
            shutdown_rx.clone(),
            label_control_plane(
                in_process_client(api.clone(), "system:krust-server", &["system:masters"]),
                config.node_name.clone(),
            ),
        )));
        let (cert, key) = pki.issue_client_for(
            &format!("system:node:{}", config.node_name),
            &["system:nodes"],
            args.node_certificate_validity,
        )?;
        let url = format!("https://127.0.0.1:{}", local.port());
        let kubeconfig = pki::kubeconfig(&pki.ca_cert_pem, &url, "node", &cert, &key);
        let path = config.data_dir.join("kubelet.kubeconfig");
        pki::write_private(&path, kubeconfig.as_bytes())?;
        write_agent_tls(&pki, &config, args.node_certificate_validity)?;
        let renewal = agent::certificate::Renewal {
            node_name: config.node_name.clone(),
            kubeconfig: path,
            server_url: url,
            ca_pem: pki.ca_cert_pem.clone(),
        };
        let client =
            crate::agent::rotating_client(&kubeconfig, renewal, shutdown_rx.clone()).await?;
        agent_task = Some(crate::agent::spawn(config, client, shutdown_rx));
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = terminate.recv() => tracing::info!("terminated; shutting down"),
    }
    // Stop accepting and let requests in flight finish (bounded), so no client sees a write
    // cut off; every acknowledged write is already durable in the store.
    stop_serving.send_replace(true);
    // Then the scheduler, controllers, compactor and CRD follower stop, and the agent:
    // stopping it stops containerd but leaves the pods running (fail-static).
    shutdown_tx.send_replace(true);
    if let Some(task) = agent_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(15), task).await;
    }
    let short = std::time::Duration::from_secs(5);
    if let Some(task) = control_plane {
        let _ = tokio::time::timeout(short, task).await;
    }
    if let Some(task) = dns_task {
        let _ = tokio::time::timeout(short, task).await;
    }
    let _ = tokio::time::timeout(short, compactor).await;
    let _ = tokio::time::timeout(short, crd_follower).await;
    let _ = tokio::time::timeout(short, rbac_follower).await;
    let _ = tokio::time::timeout(short, graph_follower).await;
    if let Some(task) = control_plane_label {
        task.abort();
    }
    let _ = tokio::time::timeout(short, allocation_repair).await;
    let _ = tokio::time::timeout(short, certificate_renewal).await;
    let _ = tokio::time::timeout(short, encryption_follower).await;
    if let Some(task) = lease_renewal {
        let _ = tokio::time::timeout(short, task).await;
        // Out of the `kubernetes` Service at once, not when the lease expires.
        if let Err(e) = apiserver::server::reconcile_endpoints(
            &api,
            &endpoint_ip.to_string(),
            args.https_listen_port,
            true,
        )
        .await
        {
            tracing::warn!(error = %e, "removing the API server's endpoint lease failed");
        }
    }
    let drain = apiserver::server::DRAIN_TIMEOUT + std::time::Duration::from_secs(1);
    let _ = tokio::time::timeout(drain, serving).await;
    tracing::info!("krust server stopped");
    Ok(())
}

/// Labels the server's own node `node-role.kubernetes.io/control-plane=true` once its agent
/// has registered it.
async fn label_control_plane(client: kube::Client, node: String) {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let patch = serde_json::json!({"metadata": {"labels": {
        "node-role.kubernetes.io/control-plane": "true"}}});
    loop {
        match nodes
            .patch(&node, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => tracing::warn!(error = %e, node, "labelling the control-plane node failed"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The API server's client for node agents: trusts the cluster CA and presents a
/// certificate the agents accept.
fn node_proxy(pki: &Pki) -> anyhow::Result<apiserver::proxy::NodeProxy> {
    let (cert, key) =
        pki.issue_client(agent::stream::server::API_SERVER_CLIENT, &["system:masters"])?;
    apiserver::proxy::NodeProxy::new(&pki.ca_cert_pem, &cert, &key)
        .map_err(|e| anyhow::anyhow!("node proxy: {}", e.message))
}

/// The in-process agent's endpoint certificate (for its node address and name) and the CA
/// that verifies the API server.
pub(crate) fn write_agent_tls(
    pki: &Pki,
    config: &agent::AgentConfig,
    validity: Duration,
) -> anyhow::Result<()> {
    let files = agent::tls_files(config);
    let sans = vec![
        config.node_ip.to_string(),
        config.node_name.clone(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    let (cert, key) = pki.issue_serving_for(&config.node_name, &sans, validity)?;
    pki::write_private(&files.ca, pki.ca_cert_pem.as_bytes())?;
    pki::write_private(&files.cert, cert.as_bytes())?;
    pki::write_private(&files.key, key.as_bytes())?;
    Ok(())
}

/// Hidden test helpers.
#[derive(Debug, Args)]
pub(crate) struct DebugArgs {
    #[command(subcommand)]
    command: DebugCommand,
}

// The variants are the commands tests type (`store-writer`, `store-put`, `store-get`).
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// Writes keys to an embedded store as fast as it can, printing `ack <key>` after each
    /// acknowledged write, until killed. The crash test kills it with SIGKILL.
    StoreWriter {
        /// Store directory.
        #[arg(long)]
        dir: PathBuf,
        /// Concurrent writers.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Key prefix (so runs don't overwrite each other's keys).
        #[arg(long, default_value = "run")]
        prefix: String,
        /// Log size that triggers a checkpoint, in KiB (small values exercise checkpoints).
        #[arg(long, default_value_t = 64 * 1024)]
        checkpoint_min_kib: u64,
    },
    /// Writes one raw value under a key of a stopped server's embedded store, bypassing the
    /// API: tests use it to plant what an older version could have stored.
    StorePut {
        /// Store directory.
        #[arg(long)]
        dir: PathBuf,
        /// The key, e.g. `/registry/configmaps/default/x`.
        #[arg(long)]
        key: String,
        /// File holding the value.
        #[arg(long)]
        value_file: PathBuf,
    },
    /// Prints the raw stored value under a key of a stopped server's embedded store, as the
    /// disk holds it (tests check what encryption at rest leaves there).
    StoreGet {
        /// Store directory.
        #[arg(long)]
        dir: PathBuf,
        /// The key.
        #[arg(long)]
        key: String,
    },
}

pub(crate) async fn debug(args: DebugArgs) -> anyhow::Result<()> {
    match args.command {
        DebugCommand::StoreWriter { dir, writers, prefix, checkpoint_min_kib } => {
            use std::io::Write;
            let mut config = storage::embedded::Config::with_dir(dir);
            config.checkpoint_min_bytes = checkpoint_min_kib << 10;
            let store = storage::embedded::EmbeddedStore::open(config)?;
            let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
            let mut tasks = Vec::new();
            for w in 0..writers {
                let store = store.clone();
                let stdout = stdout.clone();
                let prefix = prefix.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0u64.. {
                        let key = format!("/crash/{prefix}/{w}/{i}");
                        // Each write also rewrites a hot key, like leases do, so that history
                        // piles up for the compactor below and checkpoints happen.
                        let hot = format!("/crash/{prefix}/hot/{w}");
                        let txn = storage::Txn {
                            success: vec![
                                storage::Op::Put { key: key.clone(), value: bytes_of(&key) },
                                storage::Op::Put { key: hot.clone(), value: bytes_of(&hot) },
                            ],
                            ..storage::Txn::default()
                        };
                        if storage::Store::txn(&store, txn).await.is_err() {
                            return;
                        }
                        let mut out =
                            stdout.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        let _ = writeln!(out, "ack {key}");
                        let _ = out.flush();
                    }
                }));
            }
            let compactor = store.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    if let Ok(revision) = storage::Store::current_revision(&compactor).await {
                        let _ = storage::Store::compact(&compactor, revision - 10).await;
                    }
                }
            });
            for t in tasks {
                let _ = t.await;
            }
            Ok(())
        }
        DebugCommand::StorePut { dir, key, value_file } => {
            let value = std::fs::read(&value_file)?;
            let store =
                storage::embedded::EmbeddedStore::open(storage::embedded::Config::with_dir(dir))?;
            let txn = storage::Txn {
                success: vec![storage::Op::Put { key, value: bytes::Bytes::from(value) }],
                ..storage::Txn::default()
            };
            storage::Store::txn(&store, txn).await?;
            Ok(())
        }
        DebugCommand::StoreGet { dir, key } => {
            use std::io::Write;
            let store =
                storage::embedded::EmbeddedStore::open(storage::embedded::Config::with_dir(dir))?;
            let (kv, _) = storage::get(&store, &key).await?;
            let kv = kv.with_context(|| format!("{key} is not stored"))?;
            std::io::stdout().write_all(&kv.value)?;
            Ok(())
        }
    }
}

fn bytes_of(key: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(key.repeat(4).as_bytes())
}

/// A client of this process's own API server that calls its handler directly (see
/// `apiserver::server::InProcess`), for the in-process scheduler and controllers.
fn in_process_client(
    api: Arc<apiserver::handler::ApiServer>,
    user: &str,
    groups: &[&str],
) -> kube::Client {
    let base = http::Uri::from_static("http://in-process");
    let service = tower::ServiceBuilder::new()
        .layer(kube::client::middleware::BaseUriLayer::new(base))
        .service(apiserver::server::InProcess::new(api, user, groups));
    kube::Client::new(service, "default")
}
