//! The `berth` command line: parses arguments and calls into the library. Nothing else.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use berth::client::{encode, render_regions, AdminClient, TOKEN_ENV};
use berth::config::Config;
use berth::snapshot::Snapshot;

/// `--version`: the crate version, the commit and the commit's date (from `build.rs`).
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BERTH_COMMIT"),
    " of ",
    env!("BERTH_BUILD_DATE"),
    ")"
);

/// Where `serve` looks for its config when no `--config` is given.
const DEFAULT_CONFIG: &str = "/etc/berth/berth.toml";

#[derive(Parser)]
#[command(
    name = "berth",
    version = LONG_VERSION,
    about = "Geo-aware DNS and routing for replicated container registries",
    after_help = "Logs go to stderr. Environment: BERTH_LOG (log filter, as --log-level), \
                  BERTH_LOG_FORMAT (as --log-format), NO_COLOR (no colours even on a terminal), \
                  BERTH_ADMIN_TOKEN (the admin token for region commands)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log line format: text (coloured only on a terminal, never with NO_COLOR) or json (one
    /// object per line).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "BERTH_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Log filter: a level (error, warn, info, debug, trace) or directives such as
    /// "info,berth::proxy=debug". Default: info.
    #[arg(long, global = true, env = "BERTH_LOG", value_name = "FILTER")]
    log_level: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Output of the commands that print a table.
#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run every front end the config names, until SIGINT/SIGTERM (SIGHUP reloads).
    Serve {
        /// The config file [default: /etc/berth/berth.toml]
        #[arg(long)]
        config: Option<PathBuf>,
        /// Log one line per proxied request (target berth::access); also `[log] access`.
        #[arg(long, env = "BERTH_ACCESS_LOG", value_parser = clap::builder::BoolishValueParser::new())]
        access_log: bool,
        /// Log one line per DNS query (target berth::query); also `[log] queries`.
        #[arg(long, env = "BERTH_QUERY_LOG", value_parser = clap::builder::BoolishValueParser::new())]
        query_log: bool,
    },
    /// Validate a config, everything it names (zones, GeoIP) and the state files a start reads (flags, replication queue); exit 1 on the first error.
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
        /// A running server's admin API, e.g. http://127.0.0.1:9180 or 127.0.0.1:9180
        #[arg(long)]
        admin: Option<String>,
        /// Output format (json: the admin API's answer, with --admin).
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Look at and steer the regions of a running server (token from BERTH_ADMIN_TOKEN).
    Region {
        #[command(subcommand)]
        command: RegionCommand,
        /// The admin API: http://host:port, https://host:port or host:port.
        #[arg(long, global = true, default_value = "http://127.0.0.1:9180")]
        admin: String,
        /// Output format of `region list`.
        #[arg(short = 'o', long, global = true, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to stdout: `berth man | man -l -`.
    Man,
    /// GeoIP database tools.
    Geoip {
        #[command(subcommand)]
        command: GeoipCommand,
    },
    /// A [cluster]'s members, etcd connectivity and config hashes, as one instance sees them.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        #[arg(long, global = true, default_value = "http://127.0.0.1:9180")]
        admin: String,
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
enum ClusterCommand {
    /// Members (version, config hash, admin address), connectivity, verdicts per region.
    Status,
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
    Disable {
        name: String,
        /// Why (shown beside the flag in the API, CLI and dashboard).
        #[arg(long)]
        reason: Option<String>,
        /// Who (default: the address the server sees this client at).
        #[arg(long)]
        by: Option<String>,
        /// A maintenance window: the region comes back by itself after this long ("2h").
        #[arg(long = "for")]
        for_: Option<String>,
    },
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
    let format = match cli.log_format {
        LogFormat::Text => berth::logs::Format::Text,
        LogFormat::Json => berth::logs::Format::Json,
    };
    if let Err(e) = berth::logs::init(format, cli.log_level.as_deref()) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
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
        Command::Serve {
            config,
            access_log,
            query_log,
        } => {
            let config = config_or_default(config)?;
            berth::logs::enable(access_log, query_log);
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
            output,
            ..
        } => {
            let c = AdminClient::new(&admin, std::env::var(TOKEN_ENV).ok());
            let mut path = format!("/api/v1/route?client={}", encode(&address.to_string()));
            if let Some(n) = name {
                path.push_str(&format!("&name={}", encode(&n)));
            }
            let v = c.get(&path)?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", v["explanation"].as_str().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Region {
            command,
            admin,
            output,
        } => {
            region(
                &AdminClient::new(&admin, std::env::var(TOKEN_ENV).ok()),
                &command,
                output,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Route {
            address,
            name,
            config,
            admin: None,
            output,
        } => {
            route_offline(&config, name.as_deref(), address, output)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "berth", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster {
            command: ClusterCommand::Status,
            admin,
        } => {
            let c = AdminClient::new(&admin, std::env::var(TOKEN_ENV).ok());
            print!(
                "{}",
                berth::client::render_cluster(&c.get("/api/v1/cluster")?)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Replication { command, admin } => {
            replication(
                &AdminClient::new(&admin, std::env::var(TOKEN_ENV).ok()),
                command,
            )?;
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

/// `berth replication status|sync` against a running server's admin API.
fn replication(c: &AdminClient, command: ReplicationCommand) -> anyhow::Result<()> {
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
    Ok(())
}

/// `berth check-config`: load everything the config names, as a reload would, and read the
/// state files a start would (changing none).
fn check_config(file: &std::path::Path) -> ExitCode {
    let snap = Config::load(file)
        .map_err(anyhow::Error::from)
        .and_then(|c| Snapshot::load(c, 0).map_err(anyhow::Error::from));
    let checked = snap.and_then(|s| check_state(&s.config).map(|state| (s, state)));
    match checked {
        Ok((s, state)) => {
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
            println!("{state}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The state files `serve` would start from (region flags, replication queue and journal,
/// remembered deletes), read without changing them: one that would stop the start fails the
/// check too. What they hold, in one line.
fn check_state(config: &Config) -> anyhow::Result<String> {
    use berth::replication::{deletes, queue::Queue};
    let flags = berth::flags::Flags::read(&config.admin.state_file)?;
    let mut line = format!(
        "state: {}: {} region flag(s) set",
        config.admin.state_file.display(),
        flags.recorded()
    );
    if let Some(r) = &config.replication {
        let queue = Queue::load(&r.queue_file)?;
        let removed = deletes::load(&deletes::path_for(&r.queue_file))?;
        line.push_str(&format!(
            "; replication queue {}: {} job(s), {} remembered delete(s)",
            r.queue_file.display(),
            queue.len(),
            removed.len()
        ));
    }
    Ok(line)
}

/// `serve`'s config: the one given, else [`DEFAULT_CONFIG`] when it exists.
fn config_or_default(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let p = PathBuf::from(DEFAULT_CONFIG);
    anyhow::ensure!(
        p.exists(),
        "no --config given and {DEFAULT_CONFIG} does not exist: pass --config FILE \
         (the demo is --config config/demo.toml)"
    );
    Ok(p)
}

/// `berth region list|enable|disable` against a running server.
fn region(c: &AdminClient, command: &RegionCommand, output: Output) -> anyhow::Result<()> {
    match command {
        RegionCommand::List if output == Output::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&c.get("/api/v1/regions")?)?
            )
        }
        RegionCommand::List => print!("{}", render_regions(&c.get("/api/v1/regions")?)),
        RegionCommand::Disable { name, .. } | RegionCommand::Enable { name } => {
            let enabled = matches!(command, RegionCommand::Enable { .. });
            let mut body = serde_json::json!({ "endpoint_enabled": enabled });
            if let RegionCommand::Disable {
                reason, by, for_, ..
            } = command
            {
                for (k, v) in [("reason", reason), ("by", by), ("for", for_)] {
                    if let Some(v) = v {
                        body[k] = serde_json::json!(v);
                    }
                }
            }
            let v = c.put(&format!("/api/v1/regions/{}", encode(name)), &body)?;
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
    output: Output,
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
    if output == Output::Json {
        // The same fields the admin API's /api/v1/route gives, minus the live state.
        let v = serde_json::json!({
            "client": address.to_string(),
            "name": rn.name,
            "explanation": snap.explain(rn, &routed),
            "client_key": routed.decision.key.to_string(),
            "region": routed.decision.region.map(|r| snap.config.regions[r].name.clone()),
            "fail_open": routed.decision.fail_open,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", snap.explain(rn, &routed));
    }
    Ok(())
}
