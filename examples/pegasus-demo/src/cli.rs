//! The demo's command line: every option has a default, so `cargo run -p pegasus-demo`
//! needs none; a bad one stops the start with a message naming it.

use std::path::PathBuf;

/// The usage text, for `--help` and after a bad option.
pub(crate) const USAGE: &str = "\
usage: pegasus-demo [--scenario] [--shipping-port PORT] [--identity-port PORT] [--data-dir DIR]

  --scenario             run the design's Create Shipment flow over HTTP, print each step,
                         stop; exit 0 only when every step was observed
  --shipping-port PORT   Shipping's HTTP port (SHIPPING_HTTP_PORT; default 5100; 0: any free)
  --identity-port PORT   Identity's HTTP port (IDENTITY_HTTP_PORT; default 5101; 0: any free)
  --data-dir DIR         keep the SQLite databases in DIR (default: a temporary directory,
                         removed at exit)

environment:
  KAFKA_BOOTSTRAP_SERVERS  use that broker instead of the embedded one (KAFKA_* as for the
                           services)
  SHIPPING_DATABASE_URL, IDENTITY_DATABASE_URL
                           each service's database (sqlite:... or postgres://...) instead
                           of SQLite in the data directory
  JWT_SECRET               the services' shared HS256 secret (default: a random one per run)
  RUST_LOG                 the services' log filter (logs go to stderr; default info, warn
                           with --scenario)";

/// Shipping's port when neither the flag nor the environment sets one (the design's).
const DEFAULT_SHIPPING_PORT: u16 = shipping_service::DEFAULTS.http_port;
/// Identity's port when neither the flag nor the environment sets one.
const DEFAULT_IDENTITY_PORT: u16 = identity_service::DEFAULTS.http_port;

/// What the command line and the environment asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Options {
    /// Run the scenario and stop, instead of serving until a signal.
    pub(crate) scenario: bool,
    /// Shipping's HTTP port; 0 lets the system choose.
    pub(crate) shipping_port: u16,
    /// Identity's HTTP port; 0 lets the system choose.
    pub(crate) identity_port: u16,
    /// Where the SQLite databases are kept; `None`: a temporary directory.
    pub(crate) data_dir: Option<PathBuf>,
}

/// What the command line asked for instead of a run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Run with these options.
    Run(Options),
    /// Print [`USAGE`] and stop.
    Help,
}

/// Parses the arguments (without the program name), with `env` for the variables the
/// flags override.
pub(crate) fn parse(
    args: impl IntoIterator<Item = String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Parsed, String> {
    let mut options = Options {
        scenario: false,
        shipping_port: port_from_env(env, "SHIPPING_HTTP_PORT", DEFAULT_SHIPPING_PORT)?,
        identity_port: port_from_env(env, "IDENTITY_HTTP_PORT", DEFAULT_IDENTITY_PORT)?,
        data_dir: None,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // `--name=value` and `--name value` alike.
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_owned(), Some(value)),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .map(str::to_owned)
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--help" | "-h" => return Ok(Parsed::Help),
            "--scenario" if inline.is_none() => options.scenario = true,
            "--shipping-port" => options.shipping_port = port(&name, &value(&name)?)?,
            "--identity-port" => options.identity_port = port(&name, &value(&name)?)?,
            "--data-dir" => options.data_dir = Some(PathBuf::from(value(&name)?)),
            _ => return Err(format!("unknown argument `{arg}`")),
        }
    }
    if options.shipping_port != 0 && options.shipping_port == options.identity_port {
        return Err(format!(
            "--shipping-port and --identity-port are both {}: give them different ports",
            options.shipping_port
        ));
    }
    Ok(Parsed::Run(options))
}

fn port_from_env(
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
    default: u16,
) -> Result<u16, String> {
    match env(name) {
        Some(value) => port(name, &value),
        None => Ok(default),
    }
}

fn port(name: &str, value: &str) -> Result<u16, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{name} must be a port number from 0 to 65535"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str], env: &[(&str, &str)]) -> Result<Parsed, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse(args.iter().map(|a| (*a).to_owned()), &|name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn no_arguments_give_the_designs_ports_and_a_temporary_directory() {
        assert_eq!(
            parsed(&[], &[]),
            Ok(Parsed::Run(Options {
                scenario: false,
                shipping_port: 5100,
                identity_port: 5101,
                data_dir: None,
            }))
        );
    }

    #[test]
    fn flags_win_over_the_environment() {
        let Ok(Parsed::Run(options)) = parsed(
            &[
                "--scenario",
                "--shipping-port",
                "0",
                "--identity-port=0",
                "--data-dir",
                "demo-data",
            ],
            &[
                ("SHIPPING_HTTP_PORT", "6000"),
                ("IDENTITY_HTTP_PORT", "6001"),
            ],
        ) else {
            panic!("parsed");
        };
        assert!(options.scenario);
        assert_eq!((options.shipping_port, options.identity_port), (0, 0));
        assert_eq!(options.data_dir, Some(PathBuf::from("demo-data")));
        let Ok(Parsed::Run(options)) = parsed(&[], &[("SHIPPING_HTTP_PORT", "6000")]) else {
            panic!("parsed");
        };
        assert_eq!((options.shipping_port, options.identity_port), (6000, 5101));
    }

    #[test]
    fn bad_options_are_named() {
        let error = |args: &[&str], env: &[(&str, &str)]| parsed(args, env).expect_err("refused");
        assert!(error(&["--shipping-port", "x"], &[]).contains("--shipping-port"));
        assert!(error(&["--identity-port"], &[]).contains("--identity-port"));
        assert!(error(&[], &[("IDENTITY_HTTP_PORT", "70000")]).contains("IDENTITY_HTTP_PORT"));
        assert!(error(&["--shipping-port", "5101"], &[]).contains("different ports"));
        assert!(error(&["--verbose"], &[]).contains("--verbose"));
        assert_eq!(parsed(&["-h"], &[]), Ok(Parsed::Help));
    }
}
