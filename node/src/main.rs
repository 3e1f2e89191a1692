//! The `zone-egress` binary: flags and config in, then the library does the work.

use std::process::ExitCode;

use clap::Parser;
use node::cli::{Cli, Command};
use node::config::{self, Overrides};

/// mimalloc instead of glibc's malloc: under a zone's write load glibc's allocator took a
/// quarter of all CPU (`_int_malloc`, `malloc_consolidate` in `perf`; BENCHMARKS.md, "Zone
/// state at scale").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or_else(|| Command::Run(Box::default())) {
        Command::Run(overrides) => run(&overrides),
        Command::Get(args) => print_result(node::cli::get(&args)),
        Command::Health(args) => print_result(node::cli::health(&args)),
        Command::Drain(args) => print_result(node::cli::drain(&args, &mut std::io::stdout())),
        Command::Undrain(args) => print_result(node::cli::undrain(&args)),
        Command::Apply(args) => print_result(node::cli::apply(&args)),
        Command::Delete(args) => print_result(node::cli::delete(&args)),
        Command::ForceLeave(args) => print_result(node::cli::force_leave(&args)),
        Command::Pki(command) => print_result(pki(command)),
        Command::Sni(args) => print_result(node::cli::sni(&args)),
        Command::Inspect(node::cli::InspectCommand::Route { sni, client, admin }) => {
            print_result(node::cli::inspect_route(&admin, &sni, client.as_deref()))
        }
        Command::Inspect(node::cli::InspectCommand::Outbounds {
            mesh,
            service,
            port,
            admin,
        }) => print_result(node::cli::inspect_outbounds(&admin, &mesh, &service, port)),
        Command::Export(args) => print_result(node::cli::export(&args)),
        Command::Keygen => print_result(Ok(format!("{}\n", node::gossip::sealed::generate_key()))),
    }
}

fn pki(command: node::cli::PkiCommand) -> anyhow::Result<String> {
    use node::cli::PkiCommand;
    match command {
        PkiCommand::InitCa { out, name } => {
            node::pki::init_ca(&out, &name)?;
            Ok(format!("wrote {0}/ca.pem and {0}/ca.key\n", out.display()))
        }
        PkiCommand::Issue {
            ca,
            mesh: Some(mesh),
            admin,
            spiffe,
            dns,
            ips,
            out,
            validity,
            ..
        } => {
            node::cli::issue(&admin, &mesh, &spiffe, &dns, &ips, validity, &out)?;
            let _ = ca;
            Ok(format!(
                "wrote {0}/cert.pem, {0}/key.pem and {0}/ca.pem for {spiffe}, signed by the CA of \
                 mesh {mesh}\n",
                out.display()
            ))
        }
        PkiCommand::Issue {
            ca: None,
            mesh: None,
            ..
        } => anyhow::bail!("give --ca DIR or --mesh MESH"),
        PkiCommand::Issue {
            ca: Some(ca),
            spiffe,
            dns,
            ips,
            out,
            validity,
            backdate,
            ..
        } => {
            let start = std::time::SystemTime::now() - backdate;
            let validity = validity.unwrap_or(std::time::Duration::from_secs(24 * 3600));
            let options = node::pki::IssueOptions::new(spiffe.clone(), dns, ips, start, validity)?;
            node::pki::issue_with(&ca, &out, &options)?;
            Ok(format!(
                "wrote {0}/cert.pem and {0}/key.pem for {spiffe}\n",
                out.display()
            ))
        }
    }
}

fn print_result(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(overrides: &Overrides) -> ExitCode {
    let config = match config::load(overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    node::telemetry::init_tracing(config.log.format);
    // One crypto provider, chosen explicitly: with two compiled in (ring and aws-lc-rs, which
    // dependencies enable), rustls panics when asked for "the" default.
    if std::sync::Arc::unwrap_or_clone(node::pki::provider())
        .install_default()
        .is_err()
    {
        eprintln!("error: a rustls crypto provider was already installed");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let (signals_tx, signals_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(forward_signals(signals_tx));
        node::run(config, signals_rx).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sends one message per SIGTERM or SIGINT.
async fn forward_signals(signals_tx: tokio::sync::mpsc::UnboundedSender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("error: cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if signals_tx.send(()).is_err() {
            return;
        }
    }
}
