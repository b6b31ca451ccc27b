//! The `berth` command line: parses arguments and calls into the library. Nothing else.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use berth::client::{encode, render_regions, AdminClient, TOKEN_ENV};
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
    /// Print the routing decision and its explanation for a client address: from the config
    /// (no health, no flags), or with --admin from a running server (live health and flags).
    Route {
        address: IpAddr,
        /// The routed name (default: the config's first).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "config/demo.toml")]
        config: PathBuf,
        /// A running server's admin API, e.g. http://127.0.0.1:9180
        #[arg(long)]
        admin: Option<String>,
    },
    /// Look at and steer the regions of a running server (token from BERTH_ADMIN_TOKEN).
    Region {
        #[command(subcommand)]
        command: RegionCommand,
        #[arg(long, global = true, default_value = "http://127.0.0.1:9180")]
        admin: String,
    },
    /// GeoIP database tools.
    Geoip {
        #[command(subcommand)]
        command: GeoipCommand,
    },
    /// Replication of a running server: backlog and lag per region, one image's presence.
    Replication {
        #[command(subcommand)]
        command: ReplicationCommand,
        #[arg(long, global = true, default_value = "http://127.0.0.1:9180")]
        admin: String,
    },
}

#[derive(Subcommand)]
enum ReplicationCommand {
    /// Backlog, failures and lag per region; with REPOSITORY[:TAG|@DIGEST], that image's
    /// presence in each region.
    Status { image: Option<String> },
    /// Start a reconcile pass now (needs the admin token).
    Sync,
}

#[derive(Subcommand)]
enum RegionCommand {
    /// Every region: flag, health, probe latency, answers, last error.
    List,
    /// Take a region out of routing for new clients (it keeps being probed).
    Disable { name: String },
    /// Put a region back into routing.
    Enable { name: String },
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
    // Panics go to the log like everything else, with the thread's name.
    berth::supervise::install_panic_hook();
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
        Command::CheckConfig { file } => Ok(check_config(&file)),
        Command::Route {
            address,
            name,
            admin: Some(admin),
            ..
        } => {
            let c = AdminClient::new(&admin, std::env::var(TOKEN_ENV).ok());
            let mut path = format!("/api/v1/route?client={}", encode(&address.to_string()));
            if let Some(n) = name {
                path.push_str(&format!("&name={}", encode(&n)));
            }
            let v = c.get(&path)?;
            print!("{}", v["explanation"].as_str().unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Command::Region { command, admin } => {
            region(
                &AdminClient::new(&admin, std::env::var(TOKEN_ENV).ok()),
                &command,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Route {
            address,
            name,
            config,
            admin: None,
        } => {
            route_offline(&config, name.as_deref(), address)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replication { command, admin } => {
            let c = AdminClient::new(&admin, std::env::var(TOKEN_ENV).ok());
            match command {
                ReplicationCommand::Status { image: None } => {
                    print!(
                        "{}",
                        berth::client::render_replication(&c.get("/api/v1/replication")?)
                    );
                }
                ReplicationCommand::Status { image: Some(i) } => {
                    let (repo, reference) = berth::client::split_image(&i);
                    let v = c.get(&format!(
                        "/api/v1/replication/{repo}?reference={}",
                        encode(reference)
                    ))?;
                    print!("{}", berth::client::render_image(&v));
                }
                ReplicationCommand::Sync => {
                    c.post("/api/v1/replication/sync")?;
                    println!("reconcile started");
                }
            }
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

/// `berth check-config`: load everything the config names, as a reload would.
fn check_config(file: &std::path::Path) -> ExitCode {
    let snap = Config::load(file)
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `berth region list|enable|disable` against a running server.
fn region(c: &AdminClient, command: &RegionCommand) -> anyhow::Result<()> {
    match command {
        RegionCommand::List => print!("{}", render_regions(&c.get("/api/v1/regions")?)),
        RegionCommand::Disable { name } | RegionCommand::Enable { name } => {
            let enabled = matches!(command, RegionCommand::Enable { .. });
            let v = c.put(
                &format!("/api/v1/regions/{}", encode(name)),
                &serde_json::json!({ "endpoint_enabled": enabled }),
            )?;
            println!(
                "{}: endpoint_enabled {}, health {}",
                v["name"].as_str().unwrap_or(name),
                v["endpoint_enabled"],
                v["health"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}

/// `berth route` from a config file, with no server: what a fresh server would answer.
fn route_offline(
    config: &std::path::Path,
    name: Option<&str>,
    address: std::net::IpAddr,
) -> anyhow::Result<()> {
    let snap = Snapshot::load(Config::load(config)?, 0)?;
    let rn = match name {
        Some(n) => snap
            .config
            .routed_name(n)
            .ok_or_else(|| anyhow::anyhow!("{n} is not a routed name in {}", config.display()))?,
        None => snap
            .config
            .routed_names
            .first()
            .ok_or_else(|| anyhow::anyhow!("{} has no routed names", config.display()))?,
    };
    let routed = snap.route(rn, address);
    print!("{}", snap.explain(rn, &routed));
    Ok(())
}
