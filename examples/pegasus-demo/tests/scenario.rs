//! The demo's `--scenario` as a user runs it: the binary, as a process, on its embedded
//! broker (no broker or database needed), must exit 0 having printed every step of the
//! Create Shipment flow. Bounded; the child is killed on every path out of the test.
//!
//! ```sh
//! cargo test -p pegasus-demo --test scenario
//! ```

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The whole run: start, about 4 s of scenario (3 s of it the embedded broker's group
/// join), stop. Generous for a loaded machine.
const BOUND: Duration = Duration::from_secs(120);

/// The start of each step's line, in order.
const STEPS: [&str; 12] = [
    " 1. Register a user with Identity (POST /api/users): 201, user ",
    " 2. Log in (POST /api/auth/token): 200, a ",
    " 3. Wait until Shipping knows the user from identity.user.created: ",
    " 4. Create the shipment (POST /api/shipments): 201, shipment ",
    " 5. Wait until Identity consumed shipping.shipment.created: the activity log holds the shipment",
    " 6. Read the activity log (GET /api/users/{id}/activity): 200, exactly one entry: ShipmentCreatedEvent TRACK123",
    " 7. Move the shipment Created -> InTransit (PUT /api/shipments/{id}/status): 200, Created -> InTransit",
    " 8. Move the shipment InTransit -> Delivered (PUT /api/shipments/{id}/status): 200, InTransit -> Delivered",
    " 9. An illegal transition Delivered -> InTransit is refused: 409 ",
    "10. Deactivate the user (POST /api/users/{id}/deactivate): 200, user ",
    "11. Wait until Shipping refuses the user after identity.user.deactivated: ",
    "12. Both services serve their metrics (GET /metrics): Identity 200",
];

/// Kills the child when the test leaves, however it leaves.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a pipe to its end on a thread, so the child never blocks on a full pipe.
fn drain(pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut pipe = pipe;
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Waits for the child's exit at most `bound`; `None` when it ran out.
fn wait(child: &mut Child, bound: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("child status") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn the_scenario_observes_every_step_and_exits_0() {
    let started = Instant::now();
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_pegasus-demo"))
            .args(["--scenario", "--shipping-port", "0", "--identity-port", "0"])
            // The embedded broker and temporary SQLite databases, whatever the shell has.
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .env_remove("SHIPPING_DATABASE_URL")
            .env_remove("IDENTITY_DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the demo starts"),
    );
    let stdout = drain(child.0.stdout.take().expect("stdout piped"));
    let stderr = drain(child.0.stderr.take().expect("stderr piped"));
    let status = wait(&mut child.0, BOUND);
    // Killed (if still running) before the pipes are read to their end.
    drop(child);
    let stdout = stdout.join().expect("stdout read");
    let stderr = stderr.join().expect("stderr read");
    let shown = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    let status = status.unwrap_or_else(|| panic!("no exit within {BOUND:?}\n{shown}"));
    assert!(status.success(), "exit {status}\n{shown}");
    let mut lines = stdout.lines();
    for step in STEPS {
        assert!(
            lines.any(|line| line.starts_with(step)),
            "no line starting `{step}` (in order)\n{shown}"
        );
    }
    assert!(
        stdout.contains("scenario passed: all 12 steps observed"),
        "{shown}"
    );
    println!(
        "the scenario passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
