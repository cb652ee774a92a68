//! `krust`: a Kubernetes-compatible orchestrator in one binary.

mod agent;
mod bench;
mod control;
mod flags;
mod host;
mod join;
mod secrets_encrypt;
mod server;
mod sim;
mod token;

use clap::{Parser, Subcommand};

// The API server and controllers build and drop many small JSON values; glibc's malloc spent
// a third of the server's CPU on them under load (perf), mimalloc a fraction of that.
// mimalloc is built without transparent huge pages (`no_thp`): with them, every page it
// purged and reused was faulted back in as a fresh 2 MiB page, and zeroing those took 6-7% of
// the server's CPU while scheduling (perf, `krust bench scheduler`; 0.7% without).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// krust: a Kubernetes-compatible container orchestrator in one binary.
///
/// `krust server` runs the control plane (API server and its store) and, in later releases, a
/// node agent on the same host. The real kubectl and helm work against it unchanged.
#[derive(Debug, Parser)]
#[command(name = "krust", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane: the Kubernetes API server on HTTPS with its store.
    Server(Box<server::ServerArgs>),
    /// Join a server as a node: `krust agent --server https://HOST:6443 --token TOKEN`.
    Agent(Box<agent::JoinArgs>),
    /// Stop everything an agent started on this host: pods, containerd, mounts, network.
    Reset(agent::ResetArgs),
    /// Manage the images of this host's agent.
    Image(agent::ImageArgs),
    /// Run only the scheduler, against a server: `krust scheduler --kubeconfig FILE`.
    Scheduler(control::StandaloneScheduler),
    /// Run only the controller manager, against a server: `krust controller-manager --kubeconfig FILE`.
    ControllerManager(control::StandaloneManager),
    /// Encryption of Secrets at rest: `status`, `prepare`, `rotate`, `reencrypt`, `rotate-keys`.
    SecretsEncrypt(secrets_encrypt::SecretsEncryptArgs),
    /// Bootstrap tokens agents join with: `create [--ttl 24h]`, `list`, `delete ID`, `generate`.
    Token(token::TokenArgs),
    /// Simulated nodes for scale tests: `krust sim nodes --count N --kubeconfig FILE`.
    Sim(sim::SimArgs),
    /// Measure krust against its peers (see `krust bench --help`).
    Bench(bench::BenchArgs),
    /// Internal helpers used by krust's own tests.
    #[command(hide = true)]
    Debug(server::DebugArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KRUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => server::run(*args).await,
            Command::Agent(args) => agent::run_joined(*args).await,
            Command::Reset(args) => agent::reset(args).await,
            Command::Image(args) => agent::image(args).await,
            Command::Scheduler(args) => control::run_scheduler(args).await,
            Command::ControllerManager(args) => control::run_manager(args).await,
            Command::SecretsEncrypt(args) => secrets_encrypt::run(args).await,
            Command::Token(args) => token::run(args).await,
            Command::Sim(args) => sim::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Debug(args) => server::debug(args).await,
        }
    })
}

/// Runs `task` until it ends or `shutdown` turns true, whichever comes first: every
/// long-running task of the server stops on the shutdown signal.
pub(crate) async fn until<F: std::future::Future<Output = ()>>(
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    task: F,
) {
    tokio::select! {
        () = task => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
}
