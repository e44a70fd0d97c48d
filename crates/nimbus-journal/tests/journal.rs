//! The journal's contract: appends are durable and ordered, recovery keeps exactly what
//! was acknowledged, truncation keeps what a live tenant still needs, and a deleted
//! tenant's records never reach a new tenant of the same name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use nimbus_journal::{Journal, JournalConfig, JournalError, Lsn, Record, TenantKey};

fn key(name: &str, incarnation: u64) -> TenantKey {
    TenantKey {
        name: name.into(),
        incarnation,
    }
}

fn open(dir: &Path) -> Journal {
    Journal::open(JournalConfig::new(dir)).unwrap()
}

fn replayed(journal: &Journal, tenant: &TenantKey, after: Lsn) -> Vec<Record> {
    let mut records = Vec::new();
    journal
        .replay(tenant, after, &mut |r| {
            records.push(r);
            true
        })
        .unwrap();
    records
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".journal"))
        .collect();
    names.sort();
    names
}

#[test]
fn concurrent_appends_get_contiguous_lsns_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(open(dir.path()));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                let tenant = key(&format!("t{t}"), 1);
                (0..50)
                    .map(|i| {
                        let lsn = journal
                            .append(&tenant, format!("{t}:{i}").as_bytes())
                            .unwrap();
                        (lsn, i)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = BTreeMap::new();
    for (t, thread) in threads.into_iter().enumerate() {
        let lsns = thread.join().unwrap();
        // A tenant's records are in the order it appended them.
        assert!(lsns.windows(2).all(|w| w[0].0 < w[1].0), "tenant {t}");
        for (lsn, i) in lsns {
            assert!(
                all.insert(lsn.0, (t, i)).is_none(),
                "LSN {} given twice",
                lsn.0
            );
        }
    }
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        (1..=800).collect::<Vec<u64>>()
    );
    let stats = journal.stats();
    assert_eq!(stats.records, 800);
    assert!(stats.rounds >= 1 && stats.rounds <= 800);
    println!("800 appends from 16 threads in {} rounds", stats.rounds);
    drop(journal);

    let journal = open(dir.path());
    for t in 0..16 {
        let tenant = key(&format!("t{t}"), 1);
        let records = replayed(&journal, &tenant, Lsn(0));
        let payloads: Vec<String> = records
            .iter()
            .map(|r| String::from_utf8(r.payload.clone()).unwrap())
            .collect();
        let expected: Vec<String> = (0..50).map(|i| format!("{t}:{i}")).collect();
        assert_eq!(payloads, expected, "tenant {t}");
        assert!(records.iter().all(|r| r.tenant == tenant));
        // Replaying past a position skips what is applied.
        let later = replayed(&journal, &tenant, records[24].lsn);
        assert_eq!(later.len(), 25);
        assert_eq!(later[0].lsn, records[25].lsn);
    }
    // New appends continue the sequence in a new segment.
    assert_eq!(journal.append(&key("t0", 1), b"next").unwrap(), Lsn(801));
    assert_eq!(segments(dir.path()).len(), 2);
}

#[test]
fn a_torn_tail_is_cut_and_everything_acknowledged_stays() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = key("a", 1);
    {
        let journal = open(dir.path());
        for i in 0..10u32 {
            journal.append(&tenant, &i.to_le_bytes()).unwrap();
        }
    }
    let last = dir.path().join(segments(dir.path()).pop().unwrap());
    let whole = std::fs::metadata(&last).unwrap().len();
    // Half a record more: what a crash in the middle of an append leaves.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    file.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
    drop(file);

    let journal = open(dir.path());
    assert_eq!(
        std::fs::metadata(&last).unwrap().len(),
        whole,
        "the torn tail is cut"
    );
    let records = replayed(&journal, &tenant, Lsn(0));
    assert_eq!(records.len(), 10);
    assert_eq!(records[9].payload, 9u32.to_le_bytes());
    assert_eq!(journal.append(&tenant, b"after").unwrap(), Lsn(11));
}

#[test]
fn a_damaged_segment_before_the_last_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = key("a", 1);
    for _ in 0..2 {
        let journal = open(dir.path());
        journal.append(&tenant, b"one").unwrap();
        journal.append(&tenant, b"two").unwrap();
    }
    let first = dir.path().join(&segments(dir.path())[0]);
    let mut bytes = std::fs::read(&first).unwrap();
    let at = bytes.len() - 2;
    bytes[at] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();
    match Journal::open(JournalConfig::new(dir.path())) {
        Err(JournalError::Corrupted(message)) => {
            assert!(message.contains("not the last segment"), "{message}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn truncation_keeps_what_a_live_tenant_has_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = JournalConfig::new(dir.path());
    config.segment_bytes = 256;
    let journal = Journal::open(config).unwrap();
    let (a, b, gone) = (key("a", 1), key("b", 1), key("gone", 1));
    let mut last = BTreeMap::new();
    for i in 0..40u32 {
        for tenant in [&a, &b, &gone] {
            let lsn = journal.append(tenant, &[7; 40]).unwrap();
            last.insert((tenant.name.clone(), i), lsn);
        }
    }
    let count = segments(dir.path()).len();
    assert!(count > 10, "{count} segments");
    // Nothing applied yet: tenants first seen appending have applied nothing since.
    assert_eq!(journal.truncate().unwrap(), 0);
    assert_eq!(journal.lag(&a).records, 40);

    journal.set_applied(&a, last[&("a".into(), 39)]);
    journal.forget(&gone);
    // `b` has applied half: the segments up to its 20th record can go, no more.
    let b_half = last[&("b".into(), 19)];
    journal.set_applied(&b, b_half);
    let deleted = journal.truncate().unwrap();
    assert!(deleted > 0);
    let rest = replayed(&journal, &b, b_half);
    assert_eq!(rest.len(), 20, "every unapplied record of b is still there");
    assert!(
        replayed(&journal, &gone, Lsn(0)).is_empty(),
        "a dead tenant replays nothing"
    );
    let lag = journal.lag(&b);
    assert_eq!((lag.records, lag.applied_known), (20, true));
    assert_eq!(lag.bytes, 20 * (8 + 18 + 1 + 40));
    let stats = journal.stats();
    assert_eq!(stats.segments as usize, segments(dir.path()).len());
    assert_eq!(stats.tenants_behind, 1);

    journal.set_applied(&b, last[&("b".into(), 39)]);
    journal.truncate().unwrap();
    assert_eq!(
        segments(dir.path()).len(),
        1,
        "only the segment being appended to"
    );
    assert_eq!(journal.stats().tenants_behind, 0);
    drop(journal);

    // A reopen starts after the truncated prefix.
    let journal = open(dir.path());
    let next = journal.append(&a, b"x").unwrap();
    assert_eq!(next, Lsn(121));
}

#[test]
fn after_a_reopen_a_tenant_pins_its_segments_until_it_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = JournalConfig::new(dir.path());
    config.segment_bytes = 128;
    let (a, idle) = (key("a", 1), key("idle", 1));
    {
        let journal = Journal::open(config.clone()).unwrap();
        journal.append(&idle, b"old").unwrap();
        for _ in 0..20 {
            journal.append(&a, &[1; 60]).unwrap();
        }
    }
    let journal = Journal::open(config).unwrap();
    let behind: Vec<String> = journal
        .tenants_behind()
        .into_iter()
        .map(|(k, _)| k.name)
        .collect();
    assert_eq!(behind, vec!["a".to_string(), "idle".to_string()]);
    journal.set_applied(&a, Lsn(21));
    assert_eq!(
        journal.truncate().unwrap(),
        0,
        "idle's record pins the oldest segment"
    );
    journal.set_applied(&idle, Lsn(1));
    assert!(journal.truncate().unwrap() > 0);
    assert!(journal.tenants_behind().is_empty());
}

#[test]
fn a_new_incarnation_never_sees_the_old_ones_records() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (key("t", 1), key("t", 2));
    {
        let journal = open(dir.path());
        journal.append(&old, b"old incarnation").unwrap();
        journal.append(&new, b"new incarnation").unwrap();
    }
    let journal = open(dir.path());
    let records = replayed(&journal, &new, Lsn(0));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload, b"new incarnation");
    journal.forget(&old);
    assert!(replayed(&journal, &old, Lsn(0)).is_empty());
}

#[test]
fn bounds_refuse_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = JournalConfig::new(dir.path());
    config.max_record_bytes = 1024;
    config.max_disk_bytes = 4096;
    let journal = Journal::open(config).unwrap();
    let a = key("a", 1);
    assert!(matches!(
        journal.append(&a, &[0; 2000]),
        Err(JournalError::Refused(m)) if m.contains("at most 1024")
    ));
    assert!(matches!(
        journal.append(&key(&"n".repeat(300), 1), b""),
        Err(JournalError::Refused(m)) if m.contains("tenant name")
    ));
    let mut appended = 0;
    let full = loop {
        match journal.append(&a, &[0; 500]) {
            Ok(_) => appended += 1,
            Err(error) => break error,
        }
        assert!(appended < 100, "the disk bound never refused");
    };
    assert!(
        matches!(&full, JournalError::Full(m) if m.contains("at most 4096")),
        "{full}"
    );
    assert!(appended >= 6, "{appended}");
    // Applying and truncating makes room again (the segment being appended to stays).
    let stats = journal.stats();
    assert!(stats.disk_bytes <= 4096, "{stats:?}");
}

/// Crash tests: a child process appends from several threads and prints each record as it
/// is acknowledged; it kills itself with SIGKILL at a fault point. After the reopen, every
/// acknowledged record is there, whole, nothing else is, and the journal accepts appends
/// again.
#[test]
fn a_kill_at_each_fault_point_loses_nothing_acknowledged() {
    if let Ok(dir) = std::env::var("NIMBUS_JOURNAL_CHILD_DIR") {
        child(Path::new(&dir));
        return;
    }
    for (point, after) in [
        ("after-append", "30"),
        ("after-sync", "30"),
        ("during-truncation", "0"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_kill_at_each_fault_point_loses_nothing_acknowledged",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NIMBUS_JOURNAL_CHILD_DIR", dir.path())
            .env("NIMBUS_JOURNAL_FAULT", point)
            .env("NIMBUS_JOURNAL_FAULT_AFTER", after)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // (tenant, counter) → LSN, as acknowledged.
        let mut acknowledged: BTreeMap<(String, u64), u64> = BTreeMap::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let fields: Vec<&str> = line.split(' ').collect();
            if let ["ack", tenant, counter, lsn] = fields[..] {
                acknowledged.insert(
                    (tenant.into(), counter.parse().unwrap()),
                    lsn.parse().unwrap(),
                );
            }
        }
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "{point}: the child was not killed ({status})"
        );
        assert!(
            !acknowledged.is_empty(),
            "{point}: nothing was acknowledged"
        );

        let journal = open(dir.path());
        // What the child marked applied before truncating (see `child`).
        let truncated_through = if point == "during-truncation" {
            APPLIED_BEFORE_TRUNCATION
        } else {
            0
        };
        for t in 0..4 {
            let tenant = key(&format!("c{t}"), 9);
            let found: BTreeMap<u64, u64> = replayed(&journal, &tenant, Lsn(0))
                .into_iter()
                .map(|r| {
                    let text = String::from_utf8(r.payload).unwrap();
                    let (name, counter) = text.split_once(':').unwrap();
                    assert_eq!(name, tenant.name, "{point}");
                    (r.lsn.0, counter.parse().unwrap())
                })
                .collect();
            // A tenant's records are its appends in order, with no gap but a lost tail.
            let counters: Vec<u64> = found.values().copied().collect();
            assert!(
                counters.windows(2).all(|w| w[1] == w[0] + 1),
                "{point}: {counters:?}"
            );
            for ((name, counter), lsn) in
                acknowledged.iter().filter(|((n, _), _)| *n == tenant.name)
            {
                if *lsn > truncated_through {
                    assert_eq!(
                        found.get(lsn),
                        Some(counter),
                        "{point}: {name} lost {counter} (LSN {lsn})"
                    );
                }
            }
        }
        let next = journal.append(&key("c0", 9), b"after").unwrap();
        assert!(next.0 > *acknowledged.values().max().unwrap_or(&0));
        println!(
            "{point}: {} acknowledged before the kill, all there",
            acknowledged.len()
        );
    }
}

const APPLIED_BEFORE_TRUNCATION: u64 = 40;

fn child(dir: &Path) {
    let mut config = JournalConfig::new(dir);
    config.segment_bytes = 256;
    let journal = Arc::new(Journal::open(config).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let journal = journal.clone();
            std::thread::spawn(move || {
                let tenant = key(&format!("c{t}"), 9);
                for counter in 0..200u64 {
                    let text = format!("{}:{counter}", tenant.name);
                    let Ok(lsn) = journal.append(&tenant, text.as_bytes()) else {
                        return;
                    };
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "ack {} {counter} {}", tenant.name, lsn.0);
                    let _ = out.flush();
                }
            })
        })
        .collect();
    if std::env::var("NIMBUS_JOURNAL_FAULT").as_deref() == Ok("during-truncation") {
        while journal.stats().records < 2 * APPLIED_BEFORE_TRUNCATION {
            std::thread::yield_now();
        }
        for t in 0..4 {
            journal.set_applied(&key(&format!("c{t}"), 9), Lsn(APPLIED_BEFORE_TRUNCATION));
        }
        let _ = journal.truncate();
    }
    for thread in threads {
        let _ = thread.join();
    }
    // Not reached when the fault fired; a child that ends here fails the parent's check.
}

/// A crash right after a segment was created, before its first round: the empty segment
/// has the name the next append's segment wants. The reopen removes it and appends go on.
#[test]
fn an_empty_last_segment_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = key("a", 1);
    {
        let journal = open(dir.path());
        journal.append(&tenant, b"one").unwrap();
    }
    // What the writer leaves between creating segment 2 and writing into it.
    let mut empty = b"NIMBUSJ1".to_vec();
    empty.extend_from_slice(&2u64.to_le_bytes());
    std::fs::write(dir.path().join(format!("{:020}.journal", 2)), empty).unwrap();
    let journal = open(dir.path());
    assert_eq!(journal.append(&tenant, b"two").unwrap(), Lsn(2));
    let payloads: Vec<Vec<u8>> = replayed(&journal, &tenant, Lsn(0))
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(payloads, vec![b"one".to_vec(), b"two".to_vec()]);
}
