//! `krust secrets-encrypt`: k3s's commands for encryption at rest, run against a server
//! with an administrator's kubeconfig (the server's `/v1-krust/encrypt/` endpoint does the
//! work, so every server sharing the store can be asked without a restart).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::Value;

/// Flags of `krust secrets-encrypt`.
#[derive(Debug, Args)]
pub(crate) struct SecretsEncryptArgs {
    /// `status`; or a rotation stage in order: `prepare` (a new key every server can read),
    /// `rotate` (the new key writes), `reencrypt` (every Secret rewritten with it, the old
    /// key dropped); or `rotate-keys`, the three at once.
    command: SecretsEncryptCommand,
    /// An administrator's kubeconfig for the server.
    #[arg(long, env = "KUBECONFIG", default_value = "/etc/krust/krust.yaml")]
    kubeconfig: PathBuf,
    /// Run a stage even when the previous one was not.
    #[arg(long, short)]
    force: bool,
    /// Print the server's answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SecretsEncryptCommand {
    Status,
    Prepare,
    Rotate,
    Reencrypt,
    RotateKeys,
}

pub(crate) async fn run(args: SecretsEncryptArgs) -> anyhow::Result<()> {
    let client = crate::control::client_from(&args.kubeconfig).await?;
    let command = args
        .command
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .context("command name")?;
    let method = if matches!(args.command, SecretsEncryptCommand::Status) {
        http::Method::GET
    } else {
        http::Method::POST
    };
    let uri = format!(
        "{}{command}{}",
        apiserver::handler::ENCRYPTION_PATH,
        if args.force { "?force=true" } else { "" }
    );
    let request = http::Request::builder().method(method).uri(uri).body(Vec::new())?;
    let text = client.request_text(request).await.map_err(|e| match e {
        kube::Error::Api(status) => anyhow::anyhow!("{command}: {}", status.message),
        e => anyhow::anyhow!("{command}: {e}"),
    })?;
    let answer: Value = serde_json::from_str(&text).context("the server's answer")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", render(&answer));
    }
    Ok(())
}

/// k3s's layout of the status.
fn render(answer: &Value) -> String {
    let status = &answer["status"];
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let mut out = String::new();
    out.push_str(&format!(
        "Encryption Status: {}\n",
        if status["enabled"].as_bool() == Some(true) { "Enabled" } else { "Disabled" }
    ));
    out.push_str(&format!("Current Rotation Stage: {}\n", text(&status["stage"])));
    out.push_str(&format!("Encrypted Resources: {}\n", {
        let names: Vec<String> =
            status["resources"].as_array().into_iter().flatten().map(text).collect();
        names.join(", ")
    }));
    out.push_str(&format!("Configuration: {}\n", text(&status["configPath"])));
    if let Some(done) = answer.get("reencrypted") {
        out.push_str(&format!(
            "Re-encrypted: {} rewritten, {} already current, {} failed\n",
            done["rewritten"], done["current"], done["failed"]
        ));
    }
    out.push_str("\nActive  Key Type           Name\n------  -----------------  ----\n");
    let active = text(&status["writeKey"]);
    for key in status["keys"].as_array().into_iter().flatten().map(text) {
        let (kind, name) = key.split_once(':').unwrap_or((key.as_str(), ""));
        let kind = match kind {
            "secretbox" => "XSalsa20-Poly1305",
            "aesgcm" => "AES-GCM",
            "aescbc" => "AES-CBC",
            _ => "Identity",
        };
        out.push_str(&format!(
            " {:<6} {:<18} {}\n",
            if key == active { "*" } else { "" },
            kind,
            name
        ));
    }
    out
}
