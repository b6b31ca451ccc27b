//! The `berth` command line: parses arguments and calls into the library. Nothing else.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use berth::config::Config;
use berth::snapshot::Snapshot;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Geo-aware DNS and routing for replicated container registries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every front end the config names, until SIGINT/SIGTERM (SIGHUP reloads).
    Serve {
        #[arg(long, default_value = "config/demo.toml")]
        config: PathBuf,
    },
    /// Validate a config and everything it names (zones, GeoIP); exit 1 on the first error.
    CheckConfig { file: PathBuf },
    /// Print the routing decision and its explanation for a client address.
    Route {
        address: IpAddr,
        /// The routed name (default: the config's first).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "config/demo.toml")]
        config: PathBuf,
    },
    /// GeoIP database tools.
    Geoip {
        #[command(subcommand)]
        command: GeoipCommand,
    },
}

#[derive(Subcommand)]
enum GeoipCommand {
    /// Build a GeoIP2-City-layout .mmdb from a CSV (network,continent,country,city,latitude,longitude).
    Build { csv: PathBuf, out: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(berth::app::serve(&config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            let snap = Config::load(&file)
                .map_err(anyhow::Error::from)
                .and_then(|c| Snapshot::load(c, 0).map_err(anyhow::Error::from));
            match snap {
                Ok(s) => {
                    println!(
                        "{}: ok: {} zone(s), {} region(s), {} routed name(s), geoip {}",
                        file.display(),
                        s.zones.zones().len(),
                        s.config.regions.len(),
                        s.config.routed_names.len(),
                        s.geo
                            .as_ref()
                            .map_or("none".to_string(), |g| g.database_type().to_string())
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Route {
            address,
            name,
            config,
        } => {
            let snap = Snapshot::load(Config::load(&config)?, 0)?;
            let rn =
                match &name {
                    Some(n) => snap.config.routed_name(n).ok_or_else(|| {
                        anyhow::anyhow!("{n} is not a routed name in {}", config.display())
                    })?,
                    None => snap.config.routed_names.first().ok_or_else(|| {
                        anyhow::anyhow!("{} has no routed names", config.display())
                    })?,
                };
            let routed = snap.route(rn, address);
            print!("{}", snap.explain(rn, &routed));
            Ok(ExitCode::SUCCESS)
        }
        Command::Geoip {
            command: GeoipCommand::Build { csv, out },
        } => {
            let report = berth::geo::build_from_csv(&csv, &out)?;
            println!(
                "{}: {} IPv4 and {} IPv6 networks",
                out.display(),
                report.networks_v4,
                report.networks_v6
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
