//! `krust token create|list|delete|generate`: bootstrap tokens (k3s's commands, upstream's
//! `bootstrap.kubernetes.io/token` Secrets in `kube-system`), through the API with an
//! administrator's kubeconfig. A created token joins agents (`krust agent --token …`) until it
//! expires or is deleted, and authenticates as `system:bootstrap:<id>`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use apiserver::bootstrap_token::{self, Usage};
use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

/// Flags of `krust token`.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    /// An administrator's kubeconfig for the server.
    #[arg(long, env = "KUBECONFIG", default_value = "/etc/krust/krust.yaml", global = true)]
    kubeconfig: PathBuf,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Creates a bootstrap token (a random one unless given) and prints it as agents take it.
    Create {
        /// The token, `[a-z0-9]{6}.[a-z0-9]{16}`.
        token: Option<String>,
        /// How long it lives (`0` never expires).
        #[arg(long, default_value = "24h", value_parser = crate::flags::parse_duration)]
        ttl: Duration,
        /// What it is for, shown by `list`.
        #[arg(long, default_value = "")]
        description: String,
        /// `authentication` (join and authenticate) and/or `signing`.
        #[arg(long, value_delimiter = ',', default_value = "signing,authentication")]
        usages: Vec<String>,
        /// Extra groups of its user, each `system:bootstrappers:…`.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
    },
    /// Lists the bootstrap tokens.
    List,
    /// Deletes tokens, by id or whole token.
    Delete {
        #[arg(required = true)]
        tokens: Vec<String>,
    },
    /// Prints a random token without storing it.
    Generate,
}

fn random_token() -> String {
    use rand::Rng;
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut part = |n: usize| -> String {
        (0..n).map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())])).collect()
    };
    let id = part(6);
    format!("{id}.{}", part(16))
}

pub(crate) async fn run(args: TokenArgs) -> anyhow::Result<()> {
    if let TokenCommand::Generate = args.command {
        println!("{}", random_token());
        return Ok(());
    }
    let client = crate::control::client_from(&args.kubeconfig).await?;
    let secrets: Api<Secret> = Api::namespaced(client, bootstrap_token::NAMESPACE);
    match args.command {
        TokenCommand::Create { token, ttl, description, usages, groups } => {
            let token = token.unwrap_or_else(random_token);
            let (id, secret) = bootstrap_token::parse(&token).with_context(|| {
                format!("{token:?} is not a bootstrap token ([a-z0-9]{{6}}.[a-z0-9]{{16}})")
            })?;
            let usages = usages
                .iter()
                .map(|u| match u.as_str() {
                    "authentication" => Ok(Usage::Authentication),
                    "signing" => Ok(Usage::Signing),
                    other => anyhow::bail!("usage {other:?}: authentication or signing"),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if let Some(bad) = groups.iter().find(|g| !g.starts_with("system:bootstrappers:")) {
                anyhow::bail!("group {bad:?} must start with system:bootstrappers:");
            }
            let expiration = (!ttl.is_zero())
                .then(|| {
                    let ttl = jiff::SignedDuration::try_from(ttl).ok()?;
                    jiff::Timestamp::now().checked_add(ttl).ok()
                })
                .flatten()
                .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string());
            let object = bootstrap_token::secret(
                id,
                secret,
                expiration.as_deref(),
                &description,
                &usages,
                &groups,
            );
            let object: Secret = serde_json::from_value(object)?;
            secrets.create(&PostParams::default(), &object).await.map_err(|e| match e {
                kube::Error::Api(s) => anyhow::anyhow!("{}", s.message),
                e => e.into(),
            })?;
            let kubeconfig = std::fs::read_to_string(&args.kubeconfig)?;
            let ca = ca_of(&kubeconfig).context("the kubeconfig names no CA")?;
            println!("K10{}::{token}", pki::join::ca_hash(&ca));
        }
        TokenCommand::List => {
            let list = secrets.list(&ListParams::default()).await?;
            println!(
                "{:<24} {:<8} {:<21} {:<30} {:<24} EXTRA GROUPS",
                "TOKEN", "TTL", "EXPIRES", "USAGES", "DESCRIPTION"
            );
            let now = jiff::Timestamp::now();
            for item in list
                .items
                .iter()
                .filter(|s| s.type_.as_deref() == Some(bootstrap_token::SECRET_TYPE))
            {
                let value = serde_json::to_value(item)?;
                let field = |k: &str| bootstrap_token::field(&value, k).unwrap_or_default();
                let expiration = field("expiration");
                let ttl = match expiration.parse::<jiff::Timestamp>() {
                    Ok(at) if at > now => format!("{}h", (at.as_second() - now.as_second()) / 3600),
                    Ok(_) => "expired".to_owned(),
                    Err(_) => "<forever>".to_owned(),
                };
                let usages: Vec<&str> = [
                    ("authentication", "usage-bootstrap-authentication"),
                    ("signing", "usage-bootstrap-signing"),
                ]
                .into_iter()
                .filter(|(_, k)| field(k) == "true")
                .map(|(name, _)| name)
                .collect();
                println!(
                    "{:<24} {:<8} {:<21} {:<30} {:<24} {}",
                    format!("{}.<hidden>", field("token-id")),
                    ttl,
                    if expiration.is_empty() { "<never>".to_owned() } else { expiration },
                    usages.join(","),
                    field("description"),
                    field("auth-extra-groups")
                );
            }
        }
        TokenCommand::Delete { tokens } => {
            for token in tokens {
                let (_, bare) = pki::join::parse_token(&token);
                let id = bare.split('.').next().unwrap_or("").to_owned();
                secrets
                    .delete(&bootstrap_token::secret_name(&id), &DeleteParams::default())
                    .await
                    .map_err(|e| match e {
                        kube::Error::Api(s) => anyhow::anyhow!("{id}: {}", s.message),
                        e => e.into(),
                    })?;
                println!("bootstrap token {id:?} deleted");
            }
        }
        TokenCommand::Generate => unreachable!("handled above"),
    }
    Ok(())
}

/// The PEM of the CA a kubeconfig trusts.
fn ca_of(kubeconfig: &str) -> Option<String> {
    use base64::Engine;
    let config = kube::config::Kubeconfig::from_yaml(kubeconfig).ok()?;
    let cluster = config.clusters.first()?.cluster.as_ref()?;
    let data = cluster.certificate_authority_data.as_ref()?;
    let pem = base64::engine::general_purpose::STANDARD.decode(data).ok()?;
    String::from_utf8(pem).ok()
}
