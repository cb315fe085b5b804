//! Lists or replays dead letters: the records a consumer could not handle, kept byte for
//! byte in `dlq-events`.
//!
//! ```sh
//! export KAFKA_BOOTSTRAP_SERVERS=$(scripts/kafka start)
//! # list what failed for the identity service's shipment consumer, by handler errors
//! cargo run -p dead-letter-replay -- --group identity-api-shipmentcreated-consumer --reason handler
//! # after fixing the handler, publish them back to their original topics
//! cargo run -p dead-letter-replay -- --group identity-api-shipmentcreated-consumer --reason handler --replay
//! ```
//!
//! Filters: `--topic <original topic>`, `--reason decode|handler|panic|publish`,
//! `--group <group>`, `--event-id <uuid>` (repeatable), `--since <RFC 3339>` and
//! `--until <RFC 3339>` (the time of the last failure), `--dead-letter-topic <name>`
//! (default `dlq-events`). Without `--replay` it only lists. Replayed records keep their
//! `ce_id`, so a consumer with an idempotency store skips any it had handled after all.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use pegasus_events::dead_letter::{DeadLetterQueue, DeadLetterReason, ReplayFilter, DEFAULT_TOPIC};
use pegasus_events::error::Report;
use pegasus_events::KafkaConfig;

fn usage(problem: &str) -> ! {
    eprintln!("dead-letter-replay: {problem}");
    eprintln!(
        "usage: dead-letter-replay [--topic T] [--reason decode|handler|panic|publish] \
         [--group G] [--event-id UUID]... [--since TIME] [--until TIME] \
         [--dead-letter-topic T] [--replay]"
    );
    std::process::exit(2);
}

fn time(value: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| usage(&format!("`{value}` is not an RFC 3339 time")))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", Report::new(&*e));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut filter = ReplayFilter::new();
    let mut topic = DEFAULT_TOPIC.to_owned();
    let mut replay = false;
    let (mut since, mut until) = (None, None);
    let mut ids = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--topic" => filter = filter.original_topic(value()),
            "--group" => filter = filter.consumer_group(value()),
            "--reason" => {
                filter = filter.reason(match value().as_str() {
                    "decode" => DeadLetterReason::Decode,
                    "handler" => DeadLetterReason::Handler,
                    "panic" => DeadLetterReason::Panic,
                    "publish" => DeadLetterReason::Publish,
                    other => usage(&format!("unknown reason `{other}`")),
                })
            }
            "--event-id" => {
                let id = value();
                ids.push(
                    uuid::Uuid::try_parse(&id)
                        .unwrap_or_else(|_| usage(&format!("`{id}` is not a UUID"))),
                );
            }
            "--since" => since = Some(time(&value())),
            "--until" => until = Some(time(&value())),
            "--dead-letter-topic" => topic = value(),
            "--replay" => replay = true,
            other => usage(&format!("unknown argument `{other}`")),
        }
    }
    if since.is_some() || until.is_some() {
        filter = filter.failed_between(
            since.unwrap_or(DateTime::<Utc>::MIN_UTC),
            until.unwrap_or(DateTime::<Utc>::MAX_UTC),
        );
    }
    if !ids.is_empty() {
        filter = filter.event_ids(ids);
    }

    let config = KafkaConfig::from_env()?.with_client_id("dead-letter-replay");
    let queue = DeadLetterQueue::new(&config)?.topic(&topic);
    let letters = queue.read(&filter).await?;
    for letter in &letters {
        println!(
            "{} {}/{}@{} group={} reason={} attempts={} failed_at={} event_id={} error={}",
            topic,
            letter.record.topic,
            letter.original_partition,
            letter.original_offset,
            letter.consumer_group,
            letter.reason,
            letter.attempts,
            letter.failed_at.to_rfc3339(),
            letter
                .event_id()
                .map_or_else(|| "-".to_owned(), |id| id.to_string()),
            letter.error
        );
    }
    if replay {
        let report = queue.replay(&filter).await?;
        println!(
            "replayed {} of {} selected dead letters ({} read, {} unreadable)",
            report.replayed, report.matched, report.examined, report.unreadable
        );
    } else {
        println!(
            "{} dead letters selected; add --replay to publish them back",
            letters.len()
        );
    }
    Ok(())
}
