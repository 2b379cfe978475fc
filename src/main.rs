use clap::Parser;
use vane::cli::{Cli, Cmd, ConfigCmd, LogFormat, PolicyCmd};

/// mimalloc rather than glibc's allocator: allocation was a fifth of a rollout-tick's CPU, and a third
/// of its user time goes with it (benches/scale.rs, docs/operations.md "Sizing").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo logs the daemon to its working directory; the terminal shows its progress.
    if !matches!(cli.command, Cmd::Demo(_) | Cmd::Completions { .. } | Cmd::Config(_)) {
        vane::telemetry::init_tracing(matches!(cli.log_format, LogFormat::Json));
    }
    let code = match cli.command {
        Cmd::Serve { config } => match vane::daemon::serve(config.as_deref()).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("vane: {e:#}");
                2
            }
        },
        Cmd::Rollout(cmd) => match vane::cli::run(cmd).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("vane: {e}");
                e.code()
            }
        },
        Cmd::Policy(PolicyCmd::Check { paths }) => vane::cli::policy_check(paths),
        Cmd::Policy(PolicyCmd::Schema) => vane::cli::policy_schema(),
        Cmd::Config(ConfigCmd::Show { config }) => vane::cli::config_show(config.as_deref()),
        Cmd::Completions { shell } => vane::cli::completions(shell),
        Cmd::Store(cmd) => vane::cli::store(cmd).await,
        Cmd::Demo(args) => match vane::demo::run(args).await {
            Ok(code) => code.into(),
            Err(e) => {
                eprintln!("vane demo: {e:#}");
                2
            }
        },
        Cmd::DemoApp(args) => match vane::demo_app::run(args).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("vane demo-app: {e:#}");
                2
            }
        },
    };
    std::process::ExitCode::from(code as u8)
}
