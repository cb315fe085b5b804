//! What the end-to-end tests of this crate share: the Identity and Shipping services
//! started as child processes (this crate's `identity` and `shipping` binaries) against
//! the broker of `PEGASUS_TEST_BOOTSTRAP`, each on a fresh database of the PostgreSQL
//! server of `PEGASUS_TEST_POSTGRES_URL`, and what the tests do with them over HTTP
//! (register a user, create shipments, read an activity log). Without the two variables
//! the tests fail, they never skip. The HTTP client, the bounded polls, the fresh
//! databases and the raw topic reader are the `test-support` crate's, which the services'
//! own tests use too.
//!
//! - A child's address is learnt from its own log: it is started with `HTTP_PORT=0` and
//!   `LOG_FORMAT=json`, and the test reads the address of its `"... service listening"`
//!   line. A restarted child is given the port its predecessor had, so clients keep their
//!   address.
//! - A child's stdout and stderr go to a file of the [`Stage`]'s temporary directory, one
//!   per start (`shipping-1.log`, `shipping-2.log`, ...). When a test fails, the last
//!   [`TAIL_LINES`] lines of every child's log are printed.
//! - Every child is killed with SIGKILL and waited for when its [`ServiceProcess`] is
//!   dropped, so no path out of a test, a failed assertion included, leaves one running.
//! - Every wait is bounded: an HTTP exchange and a child's start by [`STEP`], a poll by
//!   the bound it is given.
//!
//! The load bench (`benches/load.rs`) uses the same harness, on the servers it is given
//! ([`Stage::with_servers`]), with a client that keeps its connection open
//! ([`test_support::KeepAlive`]), and starts the demo (both services and the embedded
//! broker in one process) as a child too ([`DemoProcess`]).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use pegasus_events::Secret;
use serde_json::{json, Value};
use service_kit::auth::Claims;
use service_kit::{JwtKeys, JwtSettings};
use test_support::{call, exchange, fresh_postgres_database, required, until, STEP};
use uuid::Uuid;

/// How long Identity may take to log a flow's shipments. Its consumer group is new in
/// every run, so it reads `shipping.shipment.created` from the beginning, the events of
/// earlier runs on the same broker included, before it reaches this run's.
pub const CATCH_UP: Duration = Duration::from_secs(180);

/// How many lines of each child's log are printed when a test fails.
pub const TAIL_LINES: usize = 40;

/// The password of the users the tests register.
pub const PASSWORD: &str = "correct horse battery staple";

/// The JWT issuer and audience both services use (their defaults).
const ISSUER: &str = "identity-api";
const AUDIENCE: &str = "pegasus-services";

/// One of the two services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Users, tokens and activity logs.
    Identity,
    /// Shipments and the user cache.
    Shipping,
}

impl Service {
    /// The name its log line and its log files use (`identity`, `shipping`).
    pub fn name(self) -> &'static str {
        match self {
            Service::Identity => "identity",
            Service::Shipping => "shipping",
        }
    }

    /// The design's `ce_source` of its events.
    fn source(self) -> &'static str {
        match self {
            Service::Identity => "identity-api",
            Service::Shipping => "shipping-api",
        }
    }
}

/// Where one instance of a service keeps its state: what a restart reuses.
#[derive(Clone, Debug)]
pub struct Instance {
    /// Which service.
    pub service: Service,
    /// Its PostgreSQL database.
    pub database_url: String,
    /// Its Kafka client id, and so its consumer group
    /// (`{client id}-shipmentcreated-consumer` for Identity).
    pub client_id: String,
}

/// What the children of one test share: the binaries, the broker, one JWT secret, a
/// temporary directory for their logs, and the logs written so far.
pub struct Stage {
    identity_binary: PathBuf,
    shipping_binary: PathBuf,
    bootstrap: String,
    postgres: String,
    secret: String,
    run: Uuid,
    dir: tempfile::TempDir,
    logs: Mutex<Vec<PathBuf>>,
    /// More Kafka settings per service (credentials, TLS), set by [`Stage::with_kafka_env`].
    kafka_env: Vec<(Service, Vec<(String, String)>)>,
}

impl Stage {
    /// A stage for the binaries at `identity_binary` and `shipping_binary` (a test passes
    /// `env!("CARGO_BIN_EXE_identity")` and `env!("CARGO_BIN_EXE_shipping")`).
    pub fn new(identity_binary: &str, shipping_binary: &str) -> Stage {
        Stage::with_servers(
            identity_binary,
            shipping_binary,
            required("PEGASUS_TEST_BOOTSTRAP"),
            required("PEGASUS_TEST_POSTGRES_URL"),
        )
    }

    /// A stage on the broker at `bootstrap` and the PostgreSQL server at `postgres` (a URL
    /// with a database the stage may connect to and create databases from), for a caller
    /// that reads them from variables of its own (the load bench: `PEGASUS_BENCH_*`).
    pub fn with_servers(
        identity_binary: &str,
        shipping_binary: &str,
        bootstrap: String,
        postgres: String,
    ) -> Stage {
        let run = Uuid::now_v7();
        Stage {
            identity_binary: identity_binary.into(),
            shipping_binary: shipping_binary.into(),
            bootstrap,
            postgres,
            secret: format!("e2e-{}", Uuid::new_v4().simple()),
            run,
            dir: tempfile::Builder::new()
                .prefix("services-e2e-")
                .tempdir()
                .expect("temp dir"),
            logs: Mutex::new(Vec::new()),
            kafka_env: Vec::new(),
        }
    }

    /// This stage, with `vars` added to the environment of every process of `service`
    /// after the stage's own (so `KAFKA_BOOTSTRAP_SERVERS` among them wins): a secured
    /// cluster's listener, credentials, certificate authority.
    pub fn with_kafka_env(mut self, service: Service, vars: Vec<(String, String)>) -> Stage {
        self.kafka_env.push((service, vars));
        self
    }

    /// The directory the children run in (and their logs are written to), for files a
    /// test hands them (a password file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What `instance`'s binary prints with `--print-acls` and `more` arguments (say
    /// `--principal shipping-api`), run with the environment a start gives it: the ACLs
    /// the service needs.
    ///
    /// # Panics
    ///
    /// When the binary fails.
    pub fn print_acls(&self, instance: &Instance, more: &[&str]) -> String {
        let output = self
            .command(instance, 0, "warn")
            .arg("--print-acls")
            .args(more)
            .stdin(Stdio::null())
            .output()
            .expect("the service binary runs");
        assert!(
            output.status.success(),
            "{} --print-acls failed: {}",
            instance.service.name(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8")
    }

    /// The command that runs `instance`: only the environment given here (no
    /// appsettings.json, as the working directory is the stage's; no variable of the
    /// caller's).
    fn command(&self, instance: &Instance, port: u16, filter: &str) -> Command {
        let service = instance.service;
        let binary = match service {
            Service::Identity => &self.identity_binary,
            Service::Shipping => &self.shipping_binary,
        };
        let mut command = Command::new(binary);
        command
            .env_clear()
            .current_dir(self.dir.path())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", filter)
            .env("RUST_BACKTRACE", "1")
            .env("KAFKA_BOOTSTRAP_SERVERS", &self.bootstrap)
            .env("KAFKA_CLIENT_ID", &instance.client_id)
            .env("KAFKA_SOURCE_SERVICE", service.source())
            // A member killed without leaving the group is dropped from it after 10 s
            // instead of librdkafka's 45 s, so a restarted consumer gets its partitions
            // within the tests' bounds. (The producers log that they ignore it.)
            .env("KAFKA_PROPERTY_SESSION_TIMEOUT_MS", "10000")
            .env("DATABASE_URL", &instance.database_url)
            .env("HTTP_HOST", "127.0.0.1")
            .env("HTTP_PORT", port.to_string())
            .env("JWT_SECRET", &self.secret);
        for (_, vars) in self.kafka_env.iter().filter(|(s, _)| *s == service) {
            command.envs(vars.iter().map(|(k, v)| (k, v)));
        }
        command
    }

    /// This run's id, unique to the test run: in client ids, tracking numbers, emails.
    pub fn run(&self) -> Uuid {
        self.run
    }

    /// The broker the children use: for a test's own clients (a
    /// [`test_support::TopicReader`] of what they publish).
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// A new instance of `service`: a new, empty PostgreSQL database and a client id of
    /// this run (so its consumer groups are new). `label` tells instances apart.
    pub async fn instance(&self, service: Service, label: &str) -> Instance {
        let prefix = format!("{}_e2e", service.name());
        Instance {
            service,
            database_url: fresh_postgres_database(&self.postgres, &prefix).await,
            client_id: format!("{}-{label}-{}", service.source(), self.run.simple()),
        }
    }

    /// Starts `instance` as a child process listening on `port` (0: any free port) and
    /// returns once it logged the address it listens on (within [`STEP`]).
    pub async fn start(&self, instance: &Instance, port: u16) -> ServiceProcess {
        self.start_logging(instance, port, "info").await
    }

    /// [`Stage::start`] with `RUST_LOG` set to `filter`.
    pub async fn start_logging(
        &self,
        instance: &Instance,
        port: u16,
        filter: &str,
    ) -> ServiceProcess {
        let service = instance.service;
        let log = {
            let mut logs = self.logs.lock().expect("not poisoned");
            let count = logs
                .iter()
                .filter(|path| {
                    path.file_name()
                        .and_then(|name| name.to_str())
                        .is_some_and(|name| name.starts_with(service.name()))
                })
                .count();
            let path = self
                .dir
                .path()
                .join(format!("{}-{}.log", service.name(), count + 1));
            logs.push(path.clone());
            path
        };
        let file = File::create(&log).expect("log file created");
        let child = self
            .command(instance, port, filter)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("the service process starts");
        let mut process = ServiceProcess {
            service,
            child,
            log,
            address: None,
        };
        let address = process.wait_for_address().await;
        process.address = Some(address);
        process
    }

    /// The partitions of `topic` (created with `partitions` if it does not exist), raised
    /// to `partitions` if it has fewer: a topic created earlier by a client's auto-creation
    /// has one, and a consumer group cannot split one partition among its members. Returns
    /// the count it had, and the count it has now.
    pub async fn ensure_partitions(&self, topic: &str, partitions: i32) -> (usize, usize) {
        use rdkafka::admin::{
            AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication,
        };
        use rdkafka::client::DefaultClientContext;

        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("admin client");
        let options = AdminOptions::new().operation_timeout(Some(STEP));
        let count = |admin: &AdminClient<DefaultClientContext>| {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(topic), STEP)
                .expect("metadata");
            metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len())
                .sum::<usize>()
        };
        let before = tokio::task::block_in_place(|| count(&admin));
        if before == 0 {
            let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
            let created = admin
                .create_topics([&new], &options)
                .await
                .expect("created");
            // Created meanwhile by a service: fine.
            drop(created);
        } else if before < partitions as usize {
            let new = NewPartitions::new(topic, partitions as usize);
            let raised = admin
                .create_partitions([&new], &options)
                .await
                .expect("raised");
            for result in raised {
                result.unwrap_or_else(|(name, code)| panic!("{name}: {code}"));
            }
        }
        let after = until(
            STEP,
            "the partitions in the metadata",
            || async { tokio::task::block_in_place(|| count(&admin)) },
            |now| *now >= partitions as usize,
        )
        .await;
        (before, after)
    }

    /// Keys that sign tokens as Identity does (same secret, issuer and audience): for the
    /// tests' own tokens with chosen claims.
    pub fn jwt_keys(&self) -> JwtKeys {
        jwt_keys(&self.secret, AUDIENCE)
    }

    /// Keys with the services' secret and issuer for `audience`: their tokens are refused
    /// when it is not the services' audience.
    pub fn jwt_keys_for_audience(&self, audience: &str) -> JwtKeys {
        jwt_keys(&self.secret, audience)
    }

    /// Keys like the services' but with another secret: forged tokens.
    pub fn forged_jwt_keys(&self) -> JwtKeys {
        jwt_keys(&format!("forged-{}", Uuid::new_v4().simple()), AUDIENCE)
    }

    /// Claims for `user_id` and `email`, valid from `issued` seconds ago for `lifetime`
    /// seconds: a token that expired when `issued > lifetime`.
    pub fn claims(&self, user_id: &str, email: &str, issued: u64, lifetime: u64) -> Claims {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        Claims {
            sub: user_id.to_owned(),
            email: email.to_owned(),
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now - issued,
            exp: now - issued + lifetime,
        }
    }
}

impl Drop for Stage {
    /// On a failing test, the tail of every child's log. (The stage is declared before the
    /// processes, so they are killed, and their logs complete, by then.)
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let logs = self
            .logs
            .lock()
            .map(|logs| logs.clone())
            .unwrap_or_default();
        for log in logs {
            eprintln!("---- last {TAIL_LINES} lines of {} ----", log.display());
            for line in tail(&log, TAIL_LINES) {
                eprintln!("{line}");
            }
        }
    }
}

/// Keys signing with `secret` for [`ISSUER`] and `audience`.
fn jwt_keys(secret: &str, audience: &str) -> JwtKeys {
    JwtKeys::new(&JwtSettings {
        secret: Secret::new(secret),
        issuer: ISSUER.to_owned(),
        audience: audience.to_owned(),
        expiry: Duration::from_secs(600),
    })
}

/// The last `count` lines of the file at `path` (none if it cannot be read).
fn tail(path: &Path, count: usize) -> Vec<String> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(count)..].to_vec()
}

/// A service running as a child process; killed (SIGKILL) and waited for when dropped.
pub struct ServiceProcess {
    service: Service,
    child: Child,
    log: PathBuf,
    address: Option<SocketAddr>,
}

impl ServiceProcess {
    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address.expect("known once started")
    }

    /// Its process id (the load bench reads its CPU time from `/proc`).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL (`Child::kill` on Unix), waits for it, and checks it died of
    /// that signal: it had no chance to drain, commit or mark anything.
    pub fn sigkill(mut self) {
        self.child.kill().expect("SIGKILL sent");
        let status = self.child.wait().expect("waited for");
        assert_eq!(
            status.signal(),
            Some(9),
            "{} ended by SIGKILL, not {status}",
            self.service.name()
        );
    }

    /// Every line of its log that is a JSON object (a line cut short by SIGKILL is not).
    pub fn log_lines(&self) -> Vec<Value> {
        log_lines(&self.log)
    }

    /// Polls its log for the `"... service listening"` line and returns its address; fails
    /// if the process ends first or after [`STEP`].
    async fn wait_for_address(&mut self) -> SocketAddr {
        let message = format!("{} service listening", self.service.name());
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let found = log_lines(&self.log).into_iter().find_map(|line| {
                (line["fields"]["message"] == message.as_str())
                    .then(|| line["fields"]["address"].as_str()?.parse().ok())
                    .flatten()
            });
            if let Some(address) = found {
                return address;
            }
            if let Some(status) = self.child.try_wait().expect("status read") {
                panic!("{} ended ({status}) before listening", self.service.name());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not log its address within {STEP:?}",
                self.service.name()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo as a child process (this crate's `demo` binary, `pegasus_demo::run_process`):
/// Identity, Shipping and the embedded broker in one process, each service on SQLite, with
/// the demo's defaults. Killed (SIGKILL) and waited for when dropped; its log's tail is
/// printed then if a panic is under way.
pub struct DemoProcess {
    child: Child,
    log: PathBuf,
    identity: SocketAddr,
    shipping: SocketAddr,
    /// The log and the databases (`--data-dir`), removed once the child is gone: a killed
    /// demo cannot remove a data directory of its own. Dropped after `drop` killed it.
    _dir: tempfile::TempDir,
}

impl DemoProcess {
    /// Starts the demo binary at `binary` (`env!("CARGO_BIN_EXE_demo")`) on ports the
    /// system chooses, with none of the caller's environment (so the embedded broker and
    /// SQLite, whatever the shell exports, and the demo's default log level, `info`), and
    /// returns once it printed both services' addresses (within [`STEP`]).
    pub async fn start(binary: &str) -> DemoProcess {
        let dir = tempfile::Builder::new()
            .prefix("services-e2e-demo-")
            .tempdir()
            .expect("temp dir");
        let log = dir.path().join("demo.log");
        let file = File::create(&log).expect("log file created");
        let child = Command::new(binary)
            .args(["--shipping-port", "0", "--identity-port", "0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env_clear()
            .current_dir(dir.path())
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("the demo process starts");
        let mut demo = DemoProcess {
            child,
            log,
            identity: SocketAddr::from(([0, 0, 0, 0], 0)),
            shipping: SocketAddr::from(([0, 0, 0, 0], 0)),
            _dir: dir,
        };
        (demo.identity, demo.shipping) = demo.wait_for_addresses().await;
        demo
    }

    /// Where Identity listens.
    pub fn identity(&self) -> SocketAddr {
        self.identity
    }

    /// Where Shipping listens.
    pub fn shipping(&self) -> SocketAddr {
        self.shipping
    }

    /// Its process id (the load bench reads its CPU time from `/proc`).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Polls its log for the demo's line "Identity on http://..., Shipping on http://...,
    /// databases in ..." and returns both addresses; fails if the process ends first or
    /// after [`STEP`].
    async fn wait_for_addresses(&mut self) -> (SocketAddr, SocketAddr) {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let found = File::open(&self.log).ok().and_then(|file| {
                BufReader::new(file)
                    .lines()
                    .map_while(Result::ok)
                    .find_map(|line| {
                        let rest = line.strip_prefix("Identity on http://")?;
                        let (identity, rest) = rest.split_once(", Shipping on http://")?;
                        let (shipping, _) = rest.split_once(", databases in ")?;
                        Some((identity.parse().ok()?, shipping.parse().ok()?))
                    })
            });
            if let Some(addresses) = found {
                return addresses;
            }
            if let Some(status) = self.child.try_wait().expect("status read") {
                panic!(
                    "the demo ended ({status}) before listening:\n{}",
                    tail(&self.log, TAIL_LINES).join("\n")
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the demo did not print its addresses within {STEP:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- last {TAIL_LINES} lines of the demo's log ----");
            for line in tail(&self.log, TAIL_LINES) {
                eprintln!("{line}");
            }
        }
    }
}

/// The JSON lines of the log at `path`.
fn log_lines(path: &Path) -> Vec<Value> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .filter(Value::is_object)
        .collect()
}

/// The messages of `lines` that start with `prefix`, the prefix removed.
pub fn messages_after<'a>(lines: &'a [Value], prefix: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter_map(|line| line["fields"]["message"].as_str()?.strip_prefix(prefix))
        .collect()
}

/// Waits until `process` answers 200 on `/health/ready` (database, broker, consumer and
/// relay up), within `bound`.
pub async fn until_ready(process: &ServiceProcess, bound: Duration) {
    let what = format!("{} ready", process.service.name());
    until_ready_at(process.address(), &what, bound).await;
}

/// Waits until the service at `address` answers 200 on `/health/ready`, within `bound`;
/// `what` names it in the failure.
pub async fn until_ready_at(address: SocketAddr, what: &str, bound: Duration) {
    until(
        bound,
        what,
        || async move { exchange(address, "GET", "/health/ready", &[], b"").await },
        |answer| matches!(answer, Ok(answer) if answer.status == 200),
    )
    .await
    .expect("answered");
}

/// A user registered in Identity and signed in.
#[derive(Clone, Debug)]
pub struct User {
    /// Its id.
    pub id: String,
    /// Its email.
    pub email: String,
    /// A bearer token Identity issued for it.
    pub token: String,
}

/// Registers a new user named `name` in Identity at `identity` and signs it in.
pub async fn register(identity: SocketAddr, run: Uuid, name: &str) -> User {
    let email = format!("{name}-{}@example.com", run.simple());
    let answer = call(
        identity,
        "POST",
        "/api/users",
        None,
        Some(&json!({ "email": email, "name": name, "password": PASSWORD })),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let id = answer.body["user"]["id"]
        .as_str()
        .expect("a user id")
        .to_owned();
    let answer = call(
        identity,
        "POST",
        "/api/auth/token",
        None,
        Some(&json!({ "email": email, "password": PASSWORD })),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let token = answer.body["accessToken"]
        .as_str()
        .expect("a token")
        .to_owned();
    User { id, email, token }
}

/// Creates a shipment numbered `tracking` in Shipping at `shipping` once Shipping knows
/// `user` (403 until its `UserCreatedEvent` arrived), within [`STEP`]; its id.
pub async fn first_shipment(shipping: SocketAddr, user: &User, tracking: &str) -> Uuid {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let answer = call(
            shipping,
            "POST",
            "/api/shipments",
            Some(&user.token),
            Some(&json!({ "trackingNumber": tracking })),
        )
        .await;
        match answer.status {
            201 => return shipment_id(&answer.body),
            403 if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            status => panic!("{status}: {}", answer.body),
        }
    }
}

/// The shipment id of a `201` answer to `POST /api/shipments`.
pub fn shipment_id(created: &Value) -> Uuid {
    created["shipment"]["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("a shipment id in {created}"))
}

/// Every shipment id in Shipping's database, read page by page (100 a page) from
/// `GET /api/shipments`, with the total the last page reported.
pub async fn stored_shipments(shipping: SocketAddr, token: &str) -> (Vec<Uuid>, usize) {
    let mut ids = Vec::new();
    for page in 1.. {
        let path = format!("/api/shipments?page={page}&pageSize=100");
        let answer = call(shipping, "GET", &path, Some(token), None).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let items = answer.body["items"].as_array().expect("items");
        let total = answer.body["total"].as_u64().expect("a total") as usize;
        ids.extend(items.iter().map(|item| {
            item["id"]
                .as_str()
                .and_then(|id| id.parse::<Uuid>().ok())
                .expect("a shipment id")
        }));
        if items.is_empty() || ids.len() >= total {
            return (ids, total);
        }
    }
    unreachable!("pages are read until the total")
}

/// One entry of an activity log: its event id, its shipment id, and when Identity recorded
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The `ce_id` it was recorded from.
    pub event_id: Uuid,
    /// The shipment it is about.
    pub shipment_id: Uuid,
    /// `recordedAt`: Identity's wall clock (microseconds) when its handler wrote the
    /// entry, in the transaction that made it visible.
    pub recorded_at: DateTime<Utc>,
}

/// `user`'s activity log as Identity at `identity` serves it.
pub async fn activity(identity: SocketAddr, user: &User) -> Vec<Entry> {
    let path = format!("/api/users/{}/activity", user.id);
    let answer = call(identity, "GET", &path, Some(&user.token), None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let id = |item: &Value, field: &str| -> Uuid {
        item[field]
            .as_str()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("a {field} in {item}"))
    };
    answer.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| Entry {
            event_id: id(item, "eventId"),
            shipment_id: id(item, "shipmentId"),
            recorded_at: item["recordedAt"]
                .as_str()
                .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
                .map(|at| at.with_timezone(&Utc))
                .unwrap_or_else(|| panic!("a recordedAt in {item}")),
        })
        .collect()
}

/// Waits (within `bound`) until `user`'s activity log holds at least `want` entries,
/// then `quiet` more, and returns it as it is then: a late duplicate would show by then.
pub async fn settled_activity(
    identity: SocketAddr,
    user: &User,
    want: usize,
    bound: Duration,
    quiet: Duration,
) -> Vec<Entry> {
    until(
        bound,
        "activity log complete",
        || activity(identity, user),
        |entries| entries.len() >= want,
    )
    .await;
    tokio::time::sleep(quiet).await;
    activity(identity, user).await
}
