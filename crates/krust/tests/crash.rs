//! Crash safety of the embedded store: SIGKILL a process in the middle of concurrent
//! acknowledged writes, many times; every acknowledged write must be there after reopening.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use storage::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..12 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_krust"))
            .args([
                "debug",
                "store-writer",
                "--writers",
                "8",
                // A 64 KiB log threshold makes checkpoints (snapshot and log rotation) happen
                // during the writes, so kills also land in the middle of them.
                "--checkpoint-min-kib",
                "64",
                "--prefix",
                &format!("r{round}"),
                "--dir",
            ])
            .arg(dir.path())
            .env("KRUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(key) = line.strip_prefix("ack ") {
                    acked.push(key.to_owned());
                }
            }
            acked
        });
        // SIGKILL at a different point of the write stream each round.
        std::thread::sleep(Duration::from_millis(30 + (round as u64 * 37) % 250));
        child.kill().unwrap();
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        acknowledged.extend(acked);

        let store =
            storage::embedded::EmbeddedStore::open(storage::embedded::Config::with_dir(dir.path()))
                .unwrap();
        let all = store.range(storage::RangeRequest::prefix("/crash/")).await.unwrap();
        let present: std::collections::HashSet<&str> =
            all.kvs.iter().map(|kv| kv.key.as_str()).collect();
        let missing: Vec<&String> =
            acknowledged.iter().filter(|k| !present.contains(k.as_str())).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged writes lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        for kv in &all.kvs {
            assert_eq!(kv.value, kv.key.repeat(4).as_bytes(), "value of {} intact", kv.key);
        }
    }
    assert!(
        acknowledged.len() > 100,
        "the writer should have acknowledged writes before being killed ({})",
        acknowledged.len()
    );
}
