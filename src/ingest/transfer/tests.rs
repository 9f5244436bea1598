use super::super::test_dir::{list, TempDir};
use super::super::{IngestDir, Listed, Outcome};
use super::*;
use crate::catalog::{CatalogHandle, CatalogOptions};
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering::SeqCst;

const BS: u32 = 4096;

fn content(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 4099) as u8 ^ salt).collect()
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn spec_for(data: &[u8]) -> TransferSpec {
    TransferSpec {
        size: data.len() as u64,
        block_size: BS,
        expect: Expect::Sha256(sha(data)),
        preallocate: false,
    }
}

/// A registry publishing into a catalog folder.
fn setup(what: &str) -> (TempDir, Arc<TransferRegistry>) {
    let t = TempDir::new(what);
    let catalog = CatalogHandle::open(&t.0, CatalogOptions::default()).unwrap();
    let work = catalog.state_dir().join("ingest").join("shared");
    let ingest = IngestDir::new(catalog.root(), &work).unwrap();
    (t, TransferRegistry::new(Publisher::new(ingest, catalog)))
}

/// A transfer of 8 blocks of which blocks 1 and 5 are held.
fn eight_blocks_with_1_and_5_held(id: &str, salt: u8) -> (TempDir, Vec<u8>, Attachment) {
    let (t, reg) = setup(&format!("shared-keep-{id}"));
    let data = content(8 * BS as usize, salt);
    let a = reg.attach(id, spec_for(&data), 8).unwrap();
    a.write_blocks(1, block(&data, 1), Rewrite::Keep).unwrap();
    a.write_blocks(5, block(&data, 5), Rewrite::Keep).unwrap();
    (t, data, a)
}

fn block(data: &[u8], i: u64) -> &[u8] {
    let s = i as usize * BS as usize;
    &data[s..(s + BS as usize).min(data.len())]
}

/// Every block of `data` written from `threads` threads, each over its own order and
/// mixing single blocks, runs and pieces, then committed by all of them at once.
fn fill_from_threads(threads: u64, overlap: bool) {
    let (t, reg) = setup(&format!("shared-fill-{threads}-{overlap}"));
    // A short tail block, and enough blocks for every thread to meet the others.
    let data = Arc::new(content(97 * BS as usize + 1234, threads as u8));
    let blocks = (data.len() as u64).div_ceil(u64::from(BS));
    let spec = spec_for(&data);
    // Every thread attaches before any writes: a thread that finished and committed alone
    // would close the transfer, and a late one would start another.
    let attached = Arc::new(std::sync::Barrier::new(threads as usize));
    let handles: Vec<_> = (0..threads)
        .map(|n| {
            let (reg, data) = (Arc::clone(&reg), Arc::clone(&data));
            let attached = Arc::clone(&attached);
            std::thread::spawn(move || {
                let a = reg.attach("fill", spec, 8).unwrap();
                attached.wait();
                // Interleaved: thread n takes blocks n, n+threads, ...; overlapping: every
                // thread writes every block, starting at a different place.
                let mine: Vec<u64> = if overlap {
                    (0..blocks).map(|k| (k + n * 13) % blocks).collect()
                } else {
                    (n..blocks).step_by(threads as usize).collect()
                };
                let rewrite = if n % 2 == 0 {
                    Rewrite::Keep
                } else {
                    Rewrite::Replace
                };
                for (k, &i) in mine.iter().enumerate() {
                    match k % 3 {
                        // A run of two blocks when the next one is ours too.
                        0 if mine.get(k + 1) == Some(&(i + 1)) => {
                            let end = ((i + 2) * u64::from(BS)).min(data.len() as u64);
                            let run = &data[(i * u64::from(BS)) as usize..end as usize];
                            let _ = a.write_blocks(i, run, rewrite).unwrap();
                        }
                        1 => match a.claim(i, rewrite).unwrap() {
                            Claim::Write(mut w) => {
                                let b = block(&data, i);
                                let cut = b.len() / 3;
                                w.write(&b[..cut]).unwrap();
                                w.write(&b[cut..]).unwrap();
                                w.finish().unwrap();
                            }
                            Claim::Held | Claim::Busy => {}
                        },
                        _ => {
                            let _ = a.write_blocks(i, block(&data, i), rewrite).unwrap();
                        }
                    }
                    if k % 16 == 15 {
                        a.sync().unwrap();
                    }
                }
                a.sync().unwrap();
                // A block skipped as busy may still be missing: another thread is on it. Seen
                // complete, a block can still go missing again before the commit: a thread
                // replacing blocks (`Rewrite::Replace`) clears each while it writes it.
                let deadline = Instant::now() + Duration::from_secs(20);
                let p = loop {
                    match a.commit("shared.bin", Collision::Numbered) {
                        Ok(p) => break p,
                        Err(TransferError::Incomplete { .. }) => {
                            assert!(Instant::now() < deadline, "{:?}", a.missing_ranges(8));
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => panic!("commit: {e}"),
                    }
                };
                assert!(matches!(a.state(), TransferState::Completed(_)));
                p
            })
        })
        .collect();
    let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // One publication for all, served under the hash it was verified with.
    for p in &outcomes {
        assert!(Arc::ptr_eq(p, &outcomes[0]));
    }
    let c = &outcomes[0].committed;
    assert_eq!(c.outcome, Outcome::Created);
    assert_eq!(c.sha256, Some(sha(&data)));
    assert_eq!(std::fs::read(t.0.join("shared.bin")).unwrap(), *data);
    assert_eq!(outcomes[0].entry().unwrap().sha256, sha(&data));
    assert!(!reg.is_open("fill"));
    let work = reg.publisher().ingest().work().to_path_buf();
    assert_eq!(list(&work), Vec::<String>::new());
}

#[test]
fn two_threads_fill_one_transfer_in_interleaved_blocks() {
    fill_from_threads(2, false);
}

#[test]
fn two_threads_fill_one_transfer_in_overlapping_blocks() {
    fill_from_threads(2, true);
}

#[test]
fn eight_threads_fill_one_transfer_in_interleaved_blocks() {
    fill_from_threads(8, false);
}

#[test]
fn eight_threads_fill_one_transfer_in_overlapping_blocks() {
    fill_from_threads(8, true);
}

#[test]
fn a_crash_keeps_exactly_the_synced_blocks() {
    let (_t, reg) = setup("shared-crash");
    let data = content(20 * BS as usize + 5, 1);
    let spec = spec_for(&data);
    let a = reg.attach("crash", spec, 8).unwrap();
    let b = reg.attach("crash", spec, 8).unwrap();
    for i in [0, 1, 2, 7, 20] {
        a.write_blocks(i, block(&data, i), Rewrite::Keep).unwrap();
    }
    b.sync().unwrap();
    for i in [3, 8, 9] {
        b.write_blocks(i, block(&data, i), Rewrite::Keep).unwrap();
    }
    assert!(a.is_durable(7) && !a.is_durable(8) && a.is_written(8));
    assert_eq!(a.durable_ranges(10), [0..3, 7..8, 20..21]);
    // A connection's pending blocks: the durable ones move out to be acknowledged, the rest
    // stay pending (mutation sample G: `delete !` kept the durable ones pending and dropped
    // the others unacknowledged).
    let mut pending = vec![3, 7, 8, 20];
    assert_eq!(a.take_durable(&mut pending), [7, 20]);
    assert_eq!(pending, [3, 8]);
    // Killed: no final sync.
    a.probe().crash.store(true, SeqCst);
    drop(a);
    drop(b);
    assert!(!reg.is_open("crash"));
    let a = reg.attach("crash", spec, 8).unwrap();
    assert_eq!(a.durable_ranges(10), [0..3, 7..8, 20..21]);
    assert_eq!(a.missing_ranges(10), [3..7, 8..20]);
    assert_eq!(a.received(), 5);
    // A clean close keeps written blocks too.
    a.write_blocks(3, block(&data, 3), Rewrite::Keep).unwrap();
    drop(a);
    let a = reg.attach("crash", spec, 8).unwrap();
    assert!(a.is_durable(3));
    for r in a.missing_ranges(100) {
        for i in r {
            a.write_blocks(i, block(&data, i), Rewrite::Keep).unwrap();
        }
    }
    let p = a.commit("crash.bin", Collision::Tagged).unwrap();
    assert_eq!(std::fs::read(&p.committed.path).unwrap(), data);
}

#[test]
fn durability_is_never_reported_before_its_fdatasync() {
    let (_t, reg) = setup("shared-order");
    let data = Arc::new(content(64 * BS as usize, 2));
    let spec = spec_for(&data);
    let hold = reg.attach("order", spec, 8).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|n| {
            let (reg, data) = (Arc::clone(&reg), Arc::clone(&data));
            std::thread::spawn(move || {
                let a = reg.attach("order", spec, 8).unwrap();
                let mut pending: Vec<(u64, u64)> = Vec::new();
                for i in (n..64).step_by(4) {
                    a.write_blocks(i, block(&data, i), Rewrite::Keep).unwrap();
                    // Syncs begun before this point may not cover the block.
                    pending.push((i, a.probe().part_syncs_begun.load(SeqCst)));
                    if i % 3 == 0 {
                        a.sync().unwrap();
                    }
                    let mut ids: Vec<u64> = pending.iter().map(|p| p.0).collect();
                    let acked = a.take_durable(&mut ids);
                    let done = a.probe().part_syncs_done.load(SeqCst);
                    for i in &acked {
                        let begun = pending.iter().find(|p| p.0 == *i).unwrap().1;
                        assert!(done > begun, "block {i} reported durable before a sync");
                    }
                    pending.retain(|p| !acked.contains(&p.0));
                }
                a.sync().unwrap();
                let mut ids: Vec<u64> = pending.iter().map(|p| p.0).collect();
                assert_eq!(a.take_durable(&mut ids).len(), pending.len());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(hold.durable_ranges(4), vec![0..64]);
}

#[test]
fn a_failed_fdatasync_reports_nothing_durable_and_poisons_the_transfer() {
    let (_t, reg) = setup("shared-eio");
    let data = content(8 * BS as usize, 3);
    let spec = spec_for(&data);
    let a = reg.attach("eio", spec, 8).unwrap();
    a.write_blocks(0, block(&data, 0), Rewrite::Keep).unwrap();
    a.sync().unwrap();
    a.write_blocks(1, block(&data, 1), Rewrite::Keep).unwrap();
    a.probe().fail_part_syncs.store(1, SeqCst);
    let e = a.sync().unwrap_err();
    assert!(e.to_string().contains("Input/output error"), "{e}");
    assert!(a.is_durable(0) && !a.is_durable(1));
    // The kernel may have dropped the pages: no later sync may claim them.
    let e = a.sync().unwrap_err();
    assert!(e.to_string().contains("no longer trusted"), "{e}");
    a.probe().crash.store(true, SeqCst);
    drop(a);
    let a = reg.attach("eio", spec, 8).unwrap();
    assert_eq!(a.durable_ranges(8), vec![0..1]);
}

#[test]
fn concurrent_syncs_share_one_fdatasync() {
    let (_t, reg) = setup("shared-group");
    let data = Arc::new(content(8 * BS as usize, 4));
    let spec = spec_for(&data);
    let first = reg.attach("group", spec, 8).unwrap();
    let (open_gate, gate) = std::sync::mpsc::channel();
    *first.probe().gate.lock().unwrap() = Some(gate);
    first
        .write_blocks(0, block(&data, 0), Rewrite::Keep)
        .unwrap();
    std::thread::scope(|s| {
        // Held inside its fdatasync until the others wait behind it.
        let leader = s.spawn(|| first.sync().unwrap());
        while first.probe().part_syncs_begun.load(SeqCst) == 0 {
            std::thread::yield_now();
        }
        let others: Vec<_> = (1..8u64)
            .map(|i| {
                let (reg, data) = (Arc::clone(&reg), Arc::clone(&data));
                s.spawn(move || {
                    let a = reg.attach("group", spec, 8).unwrap();
                    a.write_blocks(i, block(&data, i), Rewrite::Keep).unwrap();
                    a.sync().unwrap();
                    assert!(a.is_durable(i));
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while first.probe().sync_waits.load(SeqCst) < 7 {
            assert!(Instant::now() < deadline, "writers never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        open_gate.send(()).unwrap();
        leader.join().unwrap();
        for o in others {
            o.join().unwrap();
        }
    });
    // The leader's own sync, then one for the seven that waited behind it.
    assert_eq!(first.probe().part_syncs_done.load(SeqCst), 2);
    assert_eq!(first.durable_ranges(8), vec![0..8]);
}

/// A replacement claimed while a sync is between its batch and its fdatasync takes its
/// block out of that batch: the old copy was synced, the new one is not written yet.
#[test]
fn a_block_replaced_while_a_sync_runs_is_left_out_of_that_sync() {
    let (_t, reg) = setup("shared-replace-mid-sync");
    let data = content(3 * BS as usize, 9);
    let spec = spec_for(&data);
    let a = reg.attach("midsync", spec, 8).unwrap();
    a.write_blocks(0, &data, Rewrite::Keep).unwrap();
    let (open_gate, gate) = std::sync::mpsc::channel();
    *a.probe().gate.lock().unwrap() = Some(gate);
    std::thread::scope(|s| {
        let sync = s.spawn(|| a.sync().unwrap());
        while a.probe().part_syncs_begun.load(SeqCst) == 0 {
            std::thread::yield_now();
        }
        let Claim::Write(mut w) = a.claim(1, Rewrite::Replace).unwrap() else {
            panic!("replace claims a written block");
        };
        w.write(&block(&data, 1)[..10]).unwrap();
        drop(w);
        open_gate.send(()).unwrap();
        sync.join().unwrap();
    });
    assert!(!a.is_durable(1) && !a.is_written(1));
    assert_eq!(a.durable_ranges(4), [0..1, 2..3]);
    // What the bitmap on disk says: killed now, the torn block 1 is not claimed.
    a.probe().crash.store(true, SeqCst);
    drop(a);
    let a = reg.attach("midsync", spec, 8).unwrap();
    assert_eq!(a.durable_ranges(4), [0..1, 2..3]);
}

#[test]
fn joining_checks_parameters_and_the_connection_cap() {
    let (_t, reg) = setup("shared-join");
    let data = content(10_000, 5);
    let spec = spec_for(&data);
    let held: Vec<_> = (0..8)
        .map(|_| reg.attach("join", spec, 8).unwrap())
        .collect();
    assert_eq!(held[0].connections(), 8);
    let e = reg.attach("join", spec, 8).unwrap_err();
    assert!(
        matches!(e, TransferError::TooManyConnections { max: 8 }),
        "{e}"
    );
    for other in [
        TransferSpec {
            size: 10_001,
            ..spec
        },
        TransferSpec {
            block_size: 8192,
            ..spec
        },
        TransferSpec {
            expect: Expect::Sha256([0; 32]),
            ..spec
        },
    ] {
        let e = reg.attach("join", other, 8).unwrap_err();
        assert!(matches!(e, TransferError::ParameterMismatch { .. }), "{e}");
    }
    assert!(matches!(
        reg.discard("join"),
        Err(TransferError::InUse { .. })
    ));
    // Whole run, ingest transfer part: `is_open` as `false` stayed green.
    assert!(reg.is_open("join"));
    drop(held);
    assert!(!reg.is_open("join"));
    // Left on disk with another size: still a mismatch, until discarded.
    let e = reg
        .attach("join", TransferSpec { size: 5, ..spec }, 8)
        .unwrap_err();
    assert!(matches!(e, TransferError::ParameterMismatch { .. }), "{e}");
    reg.discard("join").unwrap();
    // Nothing on disk any more (or ever): discarding is fine (mutation shard 16/40: the
    // NotFound guard of `Part::remove` as `false` made it an error).
    reg.discard("join").unwrap();
    reg.discard("never-there").unwrap();
    // A bitmap that cannot be removed (here a folder under its name) fails the discard rather
    // than passing for gone (mutation shard 19/40: its error guard as `false`).
    let bitmap = reg.publisher.ingest().work().join("stuck.bitmap");
    std::fs::create_dir(&bitmap).unwrap();
    assert!(reg.discard("stuck").is_err());
    std::fs::remove_dir(&bitmap).unwrap();
    let a = reg
        .attach("join", TransferSpec { size: 5, ..spec }, 8)
        .unwrap();
    assert_eq!(a.blocks(), 1);
    assert_eq!(a.block_len(0), 5);
    // Another process's lock on a part is reported as such.
    drop(a);
    let other = reg
        .publisher()
        .ingest()
        .begin_resumable("join", 5, BS)
        .unwrap();
    let e = reg
        .attach("join", TransferSpec { size: 5, ..spec }, 8)
        .unwrap_err();
    assert!(matches!(e, TransferError::Locked { .. }), "{e}");
    // Nor can it be discarded meanwhile: Locked too, not an I/O error (whole run, ingest
    // transfer part: the WouldBlock arm of `discard` deleted).
    let e = reg.discard("join").unwrap_err();
    assert!(matches!(e, TransferError::Locked { .. }), "{e}");
    drop(other);
    for id in ["", "../x", "a.b"] {
        let e = reg.attach(id, spec, 8).unwrap_err();
        assert!(matches!(e, TransferError::Ingest(_)), "{e}");
        assert!(!reg.is_open(id));
    }
}

#[test]
fn claims_exclude_each_other_and_an_unfinished_block_stays_missing() {
    let (_t, reg) = setup("shared-claim");
    let data = content(4 * BS as usize, 6);
    let spec = spec_for(&data);
    let a = reg.attach("claim", spec, 8).unwrap();
    let b = reg.attach("claim", spec, 8).unwrap();
    let Claim::Write(mut w) = a.claim(1, Rewrite::Replace).unwrap() else {
        panic!("block 1 is free");
    };
    assert!(matches!(b.claim(1, Rewrite::Replace).unwrap(), Claim::Busy));
    let run = &data[..3 * BS as usize];
    assert_eq!(b.write_blocks(0, run, Rewrite::Keep).unwrap(), Wrote::Busy);
    assert!(w.write(&vec![0; BS as usize + 1]).is_err());
    w.write(&block(&data, 1)[..100]).unwrap();
    assert!(w.finish().is_err()); // not written to its end: stays missing
    assert!(!a.is_written(1));
    let Claim::Write(mut w) = b.claim(1, Rewrite::Keep).unwrap() else {
        panic!("block 1 is free again");
    };
    // Whole run, ingest transfer part: `len` as 0 or 1, `is_empty` as either or its `==` as
    // `!=` stayed green.
    assert_eq!((w.len(), w.is_empty()), (u64::from(BS), false));
    w.write(&block(&data, 1)[..100]).unwrap();
    drop(w); // a connection cut mid-chunk
    assert!(!a.is_written(1));
    assert_eq!(
        b.write_blocks(0, run, Rewrite::Keep).unwrap(),
        Wrote::Stored { blocks: 3 }
    );
    // Keep: a held block keeps its first copy.
    assert!(matches!(b.claim(1, Rewrite::Keep).unwrap(), Claim::Held));
    assert_eq!(
        a.write_blocks(0, &vec![9; BS as usize], Rewrite::Keep)
            .unwrap(),
        Wrote::Stored { blocks: 0 }
    );
    assert!(a.claim(4, Rewrite::Keep).is_err());
    assert!(a.write_blocks(3, &[1; 10], Rewrite::Keep).is_err());
    a.write_blocks(3, block(&data, 3), Rewrite::Keep).unwrap();
    let p = a.commit("claim.bin", Collision::Tagged).unwrap();
    assert_eq!(std::fs::read(&p.committed.path).unwrap(), data);
    // Completed: late copies are held, never written.
    assert!(matches!(b.claim(0, Rewrite::Replace).unwrap(), Claim::Held));
    // And so are late runs: stored already, not busy (whole run, ingest transfer part: the
    // Held arm of `write_blocks` on a closed part deleted made them Busy).
    assert_eq!(
        b.write_blocks(0, run, Rewrite::Replace).unwrap(),
        Wrote::Stored { blocks: 0 }
    );
}

/// `is_complete` tells a driver to commit (FastDP's last Ack, filestorage's reply): it must
/// not say so while a block is missing, nor while a replaced block is being rewritten. A
/// commit before then says how many blocks are still missing (mutation sample E: `blocks -
/// received` as `+` stayed green while every test committed with nothing received).
#[test]
fn complete_only_while_every_block_is_written() {
    let (_t, reg) = setup("shared-complete");
    let data = content(3 * BS as usize + 7, 2);
    let a = reg.attach("complete", spec_for(&data), 8).unwrap();
    assert_eq!((a.received(), a.blocks()), (0, 4));
    assert!(!a.is_complete());
    let three = &data[..3 * BS as usize];
    assert_eq!(
        a.write_blocks(0, three, Rewrite::Keep).unwrap(),
        Wrote::Stored { blocks: 3 }
    );
    assert_eq!(a.received(), 3);
    assert!(!a.is_complete());
    // A commit now counts the blocks still missing (4 - 3), not the blocks it holds.
    let e = a.commit("complete.bin", Collision::Tagged).unwrap_err();
    assert!(matches!(e, TransferError::Incomplete { missing: 1 }), "{e}");
    a.write_blocks(3, block(&data, 3), Rewrite::Keep).unwrap();
    assert_eq!(a.received(), 4);
    assert!(a.is_complete());
    // A replacement takes its block out until it is written whole again.
    let Claim::Write(mut w) = a.claim(1, Rewrite::Replace).unwrap() else {
        panic!("block 1 can be replaced");
    };
    assert!(!a.is_complete());
    w.write(block(&data, 1)).unwrap();
    w.finish().unwrap();
    assert!(a.is_complete());
    let p = a.commit("complete.bin", Collision::Tagged).unwrap();
    assert_eq!(std::fs::read(&p.committed.path).unwrap(), data);
}

#[test]
fn a_replacement_clears_the_durable_bit_before_its_first_byte() {
    let (_t, reg) = setup("shared-replace");
    let data = content(3 * BS as usize, 7);
    let spec = spec_for(&data);
    let a = reg.attach("replace", spec, 8).unwrap();
    a.write_blocks(0, &vec![0xee; 3 * BS as usize], Rewrite::Keep)
        .unwrap();
    a.sync().unwrap();
    assert_eq!(a.durable_ranges(4), vec![0..3]);
    let Claim::Write(mut w) = a.claim(1, Rewrite::Replace).unwrap() else {
        panic!("replace claims a held block");
    };
    assert!(!a.is_durable(1) && !a.is_written(1));
    w.write(&block(&data, 1)[..10]).unwrap();
    // Killed mid-rewrite: the torn block is not claimed on disk.
    a.probe().crash.store(true, SeqCst);
    drop(w);
    drop(a);
    let a = reg.attach("replace", spec, 8).unwrap();
    assert_eq!(a.durable_ranges(4), [0..1, 2..3]);
    for i in 0..3 {
        a.write_blocks(i, block(&data, i), Rewrite::Replace)
            .unwrap();
    }
    let p = a.commit("replace.bin", Collision::Tagged).unwrap();
    assert_eq!(std::fs::read(&p.committed.path).unwrap(), data);
}

#[test]
fn background_hash_restarts_when_a_hashed_block_is_replaced() {
    let (_t, reg) = setup("shared-bghash");
    // Three hashing chunks and a tail.
    let data = content(3 * (1 << 20) + 777, 8);
    let blocks = (data.len() as u64).div_ceil(u64::from(BS));
    let a = reg.attach("bg", spec_for(&data), 8).unwrap();
    a.hash_in_background().unwrap();
    a.hash_in_background().unwrap();
    let bad = [0, 5, 300, blocks - 1];
    for i in 0..blocks {
        let b = block(&data, i);
        let copy = if bad.contains(&i) {
            vec![0x11; b.len()]
        } else {
            b.to_vec()
        };
        a.write_blocks(i, &copy, Rewrite::Keep).unwrap();
    }
    // The wrong copies are replaced, in the hashed prefix and past it, out of order.
    for i in [300, 0, blocks - 1, 5] {
        assert_eq!(
            a.write_blocks(i, block(&data, i), Rewrite::Replace)
                .unwrap(),
            Wrote::Stored { blocks: 1 }
        );
    }
    let p = a.commit("bg.bin", Collision::Tagged).unwrap();
    assert_eq!(p.committed.sha256, Some(sha(&data)));
}

/// A block claimed to be written in pieces gets a copy for the background hasher when it
/// starts at most 8 blocks past the hashed prefix (it will soon join it), not further out,
/// and never without a hasher.
#[test]
fn a_claimed_block_near_the_hashed_prefix_is_copied_for_the_hasher() {
    let (_t, reg) = setup("shared-copy");
    let data = content(64 * BS as usize, 10);
    let a = reg.attach("copy", spec_for(&data), 8).unwrap();
    // Dropped unfinished, the writer leaves its block missing.
    let copied = |i: u64| match a.claim(i, Rewrite::Keep).unwrap() {
        Claim::Write(w) => w.copy.is_some(),
        _ => panic!("block {i} not claimed"),
    };
    assert!(!copied(0), "a copy with no hasher to take it");
    a.hash_in_background().unwrap();
    assert!(copied(0) && copied(8));
    assert!(!copied(9) && !copied(40));
    assert_eq!(a.received(), 0);
    a.write_blocks(0, &data, Rewrite::Keep).unwrap();
    let p = a.commit("copy.bin", Collision::Tagged).unwrap();
    assert_eq!(p.committed.sha256, Some(sha(&data)));
}

/// `Keep` over a run with a block already held writes the blocks on either side of it, each
/// run exactly, and leaves the held one alone.
#[test]
fn keep_writes_around_blocks_already_held() {
    let (_t, data, a) = eight_blocks_with_1_and_5_held("around", 11);
    // Blocks 0..8 in one call, other bytes where 1 and 5 are held.
    let mut run = data.clone();
    for i in [1, 5] {
        let s = i * BS as usize;
        run[s..s + BS as usize].fill(0xee);
    }
    assert_eq!(
        a.write_blocks(0, &run, Rewrite::Keep).unwrap(),
        Wrote::Stored { blocks: 6 }
    );
    assert!((0..8).all(|i| a.is_written(i)));
    // Past the last block (the bitmap's bytes end exactly there): not written, no panic
    // (mutation sample G: the byte bound `<` as `<=` indexed past the bitmap).
    assert!(!a.is_written(8) && !a.is_durable(8) && !a.is_written(u64::MAX));
    assert_eq!(a.missing_ranges(10), []);
    let p = a.commit("around.bin", Collision::Tagged).unwrap();
    assert_eq!(std::fs::read(&p.committed.path).unwrap(), data);
}

/// A block written in pieces takes no more than what is left of it: a piece past the block's
/// end is refused and writes nothing, whatever was written before (mutation sample H: `len -
/// pos` as `+` let a second piece run into the next block's bytes).
#[test]
fn a_block_writer_refuses_pieces_past_the_block() {
    let (_t, reg) = setup("shared-pieces");
    let data = content(3 * BS as usize, 13);
    let a = reg.attach("pieces", spec_for(&data), 8).unwrap();
    a.write_blocks(2, block(&data, 2), Rewrite::Keep).unwrap();
    let Claim::Write(mut w) = a.claim(1, Rewrite::Keep).unwrap() else {
        panic!("block 1 is missing");
    };
    w.write(&block(&data, 1)[..3000]).unwrap();
    let e = w.write(&[0xee; 2000]).unwrap_err();
    assert!(
        e.to_string().contains("more bytes than the block holds"),
        "{e}"
    );
    assert_eq!(w.written(), 3000);
    w.write(&block(&data, 1)[3000..]).unwrap();
    w.finish().unwrap();
    a.write_blocks(0, block(&data, 0), Rewrite::Keep).unwrap();
    let p = a.commit("pieces.bin", Collision::Tagged).unwrap();
    assert_eq!(std::fs::read(&p.committed.path).unwrap(), data);
}

/// A part's Debug names its file and geometry (mutation shard 18/40: an empty `fmt`).
#[test]
fn a_part_debug_names_its_file_and_geometry() {
    let (_t, reg) = setup("shared-debug");
    let data = content(BS as usize, 15);
    let a = reg.attach("dbg", spec_for(&data), 8).unwrap();
    let d = format!("{:?}", a.part);
    assert!(
        d.starts_with("Part {") && d.contains("dbg") && d.contains("block_size: 4096"),
        "{d}"
    );
}

/// A part closed for verification starts no background hasher: the commit hashes what is left
/// itself (mutation shard 17/40: `finished || !accepting` as `&&` started one on a closed part,
/// reading the whole file a second time beside the commit).
#[test]
fn a_part_closed_for_verification_starts_no_hasher() {
    let (_t, reg) = setup("shared-closed-hasher");
    let data = content(2 * BS as usize, 14);
    let a = reg.attach("closed", spec_for(&data), 8).unwrap();
    a.write_blocks(0, &data, Rewrite::Keep).unwrap();
    let running = a.part.hasher_started_at();
    a.part.close_if_complete().unwrap();
    a.part.hash_in_background().unwrap();
    assert_eq!(a.part.hasher_started_at(), running);
    let p = a.commit("closed.bin", Collision::Tagged).unwrap();
    assert_eq!(std::fs::read(&p.committed.path).unwrap(), data);
}

/// A part closed for verification takes no more claims, not even a `Replace` of a block it
/// holds: the bytes being verified stay what they are (mutation run: `finished ||
/// !accepting` as `&&` in `claim` let a replacement reopen a block under the commit).
#[test]
fn a_part_closed_for_verification_takes_no_claim() {
    let (_t, reg) = setup("shared-closed-claim");
    let data = content(2 * BS as usize, 15);
    let a = reg.attach("closed-claim", spec_for(&data), 8).unwrap();
    a.write_blocks(0, &data, Rewrite::Keep).unwrap();
    a.part.close_if_complete().unwrap();
    assert!(matches!(
        a.part.claim(0..1, Rewrite::Replace).unwrap(),
        Claimed::Closed
    ));
    assert_eq!(a.missing_ranges(10), Vec::<Range<u64>>::new());
    let p = a.commit("closed-claim.bin", Collision::Tagged).unwrap();
    assert_eq!(std::fs::read(&p.committed.path).unwrap(), data);
}

/// Claims of adjacent runs do not overlap: a run that ends where a busy one starts, or starts
/// where it ends, is granted; one that shares a block is busy (mutation run: `r.start <
/// run.end` as `<=` took a run ending at a busy one for an overlap).
#[test]
fn adjacent_claims_are_granted_overlapping_ones_are_busy() {
    let (_t, reg) = setup("shared-adjacent");
    let data = content(8 * BS as usize, 16);
    let a = reg.attach("adjacent", spec_for(&data), 8).unwrap();
    let Claimed::Runs(mid) = a.part.claim(3..5, Rewrite::Keep).unwrap() else {
        panic!("3..5 not claimed");
    };
    for (run, busy) in [(1..3, false), (5..7, false), (2..4, true), (4..6, true)] {
        match a.part.claim(run.clone(), Rewrite::Keep).unwrap() {
            Claimed::Runs(r) => {
                assert!(!busy, "{run:?} overlaps 3..5");
                for x in &r {
                    a.part.release(x);
                }
            }
            Claimed::Busy => assert!(busy, "{run:?} does not overlap 3..5"),
            Claimed::Closed => panic!("closed"),
        }
    }
    for r in &mid {
        a.part.release(r);
    }
}

/// A short last block replaced while the background hasher holds a copy of its old byte:
/// the new byte is what gets hashed, and the commit's digest is of the new bytes.
#[test]
fn a_replaced_short_last_block_is_hashed_with_its_new_bytes() {
    let (_t, reg) = setup("shared-replace-tail");
    let data = content(2 * BS as usize + 1, 17);
    let last = *data.last().unwrap();
    let a = reg.attach("tail", spec_for(&data), 8).unwrap();
    a.part.hash_in_background().unwrap();
    a.write_blocks(2, &[last ^ 0xff], Rewrite::Keep).unwrap();
    a.write_blocks(2, &[last], Rewrite::Replace).unwrap();
    a.write_blocks(0, &data[..2 * BS as usize], Rewrite::Keep)
        .unwrap();
    let p = a.commit("tail.bin", Collision::Tagged).unwrap();
    assert_eq!(std::fs::read(&p.committed.path).unwrap(), data);
}

/// Replacing the last block of a part whose blocks fill whole bitmap bytes clears its durable
/// bit on disk without reaching past the bitmap (mutation run: the last byte index as `(end +
/// 1) / 8 + 1` or `end / 8 + 1` read past it).
#[test]
fn replacing_the_last_durable_block_clears_its_bit_on_disk() {
    let (_t, reg) = setup("shared-replace-last");
    let data = content(8 * BS as usize, 18);
    let spec = spec_for(&data);
    let a = reg.attach("last", spec, 8).unwrap();
    a.write_blocks(0, &data, Rewrite::Keep).unwrap();
    a.sync().unwrap();
    assert_eq!(a.durable_ranges(8), vec![0..8]);
    let Claim::Write(w) = a.claim(7, Rewrite::Replace).unwrap() else {
        panic!("block 7 can be claimed for a replacement");
    };
    drop(w);
    a.probe().crash.store(true, SeqCst);
    drop(a);
    let a = reg.attach("last", spec, 8).unwrap();
    assert_eq!(a.durable_ranges(8), vec![0..7]);
}

/// A copy buffer goes with a run of at most 1 MiB, never more (the copies stay within the
/// hasher's budget); mutation run: `len > 1 MiB` as `==` or `>=`.
#[test]
fn copy_buffers_go_with_runs_of_at_most_one_mib() {
    let (_t, reg) = setup("shared-copy-budget");
    let data = content(300 * BS as usize, 19);
    let a = reg.attach("budget", spec_for(&data), 8).unwrap();
    a.part.hash_in_background().unwrap();
    let mib = (1 << 20) / u64::from(BS);
    assert_eq!(
        a.part
            .copy_buffer_for(&(0..mib))
            .map(|b| b.capacity() >= 1 << 20),
        Some(true)
    );
    assert!(a.part.copy_buffer_for(&(0..mib + 1)).is_none());
}

/// Missing ranges are listed up to the limit asked, the run open at the file's end included
/// (mutation run: `len < limit` as `<=` there gave one range more than asked).
#[test]
fn missing_ranges_stop_at_the_limit() {
    let (_t, _, a) = eight_blocks_with_1_and_5_held("limit", 13);
    assert_eq!(a.missing_ranges(3), [0..1, 2..5, 6..8]);
    assert_eq!(a.missing_ranges(2), [0..1, 2..5]);
    assert_eq!(a.missing_ranges(1), vec![Range { start: 0, end: 1 }]);
}

/// `Keep` claims the blocks not yet written as maximal runs, each written with one `pwrite`
/// (mutation sample H: the guard that extends a run as `false` claimed every block alone: the
/// same bytes in six writes instead of three).
#[test]
fn keep_claims_maximal_runs_around_held_blocks() {
    let (_t, _, a) = eight_blocks_with_1_and_5_held("runs", 12);
    let Claimed::Runs(runs) = a.part.claim(0..8, Rewrite::Keep).unwrap() else {
        panic!("not claimed");
    };
    assert_eq!(runs, [0..1, 2..5, 6..8]);
    for r in &runs {
        a.part.release(r);
    }
    assert_eq!(a.missing_ranges(10), [0..1, 2..5, 6..8]);
}

#[test]
fn a_mismatch_fails_every_attachment_and_deletes_the_part() {
    let (t, reg) = setup("shared-mismatch");
    let data = content(2 * BS as usize, 9);
    let spec = TransferSpec {
        expect: Expect::Sha256([0x42; 32]),
        ..spec_for(&data)
    };
    let a = reg.attach("bad", spec, 8).unwrap();
    let b = reg.attach("bad", spec, 8).unwrap();
    let e = a.commit("bad.bin", Collision::Tagged).unwrap_err();
    assert!(matches!(e, TransferError::Incomplete { missing: 2 }), "{e}");
    assert!(matches!(a.state(), TransferState::Open));
    a.write_blocks(0, &data, Rewrite::Keep).unwrap();
    let e = a.commit("bad.bin", Collision::Tagged).unwrap_err();
    let TransferError::Failed(why) = e else {
        panic!("{e}");
    };
    assert!(matches!(*why, IngestError::Mismatch { .. }), "{why}");
    assert!(matches!(
        b.wait_outcome(Duration::from_secs(5)),
        TransferState::Failed(_)
    ));
    assert!(matches!(
        b.commit("bad.bin", Collision::Tagged),
        Err(TransferError::Failed(_))
    ));
    assert!(matches!(b.claim(0, Rewrite::Replace).unwrap(), Claim::Busy));
    assert_eq!(list(&t.0), [".ferry"]);
    drop((a, b));
    // Attached again: from nothing.
    let a = reg.attach("bad", spec, 8).unwrap();
    assert_eq!(a.received(), 0);
}

#[test]
fn an_empty_transfer_completes_at_once() {
    let (t, reg) = setup("shared-empty");
    let spec = spec_for(b"");
    let a = reg.attach("empty", spec, 1).unwrap();
    assert_eq!(a.blocks(), 0);
    assert!(a.is_complete());
    assert_eq!(a.durable_ranges(1), Vec::<Range<u64>>::new());
    let p = a.commit("empty.txt", Collision::Numbered).unwrap();
    assert!(matches!(p.listed, Listed::Entry(_)));
    assert_eq!(std::fs::read(t.0.join("empty.txt")).unwrap(), b"");
}

/// Blocks of the transfers that take their space in steps (one step: 64 MiB).
const BIG_BLOCK: u64 = 64 << 20;

/// A transfer `id` of four 64 MiB blocks, preallocated step by step, and a look at how many
/// bytes its part has allocated on disk.
fn four_big_blocks(id: &str) -> (TempDir, Attachment, impl Fn() -> u64) {
    use std::os::unix::fs::MetadataExt;
    let (t, reg) = setup(&format!("shared-{id}"));
    let spec = TransferSpec {
        size: 4 * BIG_BLOCK,
        block_size: BIG_BLOCK as u32,
        expect: Expect::Nothing,
        preallocate: true,
    };
    let a = reg.attach(id, spec, 2).unwrap();
    let part = reg.publisher().ingest().work().join(format!("{id}.part"));
    (t, a, move || {
        std::fs::metadata(&part).unwrap().blocks() * 512
    })
}

/// A claim that takes the transfer past its granted space takes the next step: here, with
/// preallocation, the part's allocated size grows when the block is claimed, before any of
/// its bytes arrive (mutation sample G: `charge_claim` doing nothing left every block past
/// the first step unreserved, so a full disk showed up mid-write instead of at the claim, and
/// an owner's cap was never charged past it).
#[test]
fn a_claim_past_the_granted_space_takes_the_next_step() {
    let (_t, a, allocated) = four_big_blocks("claim-step");
    let block = BIG_BLOCK;
    // The first step (64 MiB) at attach.
    assert!((block..2 * block).contains(&allocated()), "{}", allocated());
    let Claim::Write(w0) = a.claim(0, Rewrite::Keep).unwrap() else {
        panic!("block 0 can be claimed");
    };
    assert!(allocated() < 2 * block, "{}", allocated());
    let Claim::Write(w1) = a.claim(1, Rewrite::Keep).unwrap() else {
        panic!("block 1 can be claimed");
    };
    assert!(allocated() >= 2 * block, "{}", allocated());
    drop((w0, w1));
    assert_eq!(a.missing_ranges(10), vec![0..4]);
}

/// A claim is charged its own blocks, wherever they lie: a claim of the third block alone
/// fits in the first step (mutation run: `end - start` as `+` counted a run by where it lies,
/// so a claim far into the file took the whole file's space at once).
#[test]
fn a_claim_is_charged_its_own_blocks_wherever_they_lie() {
    let (_t, a, allocated) = four_big_blocks("claim-own");
    let block = BIG_BLOCK;
    let Claim::Write(w) = a.claim(2, Rewrite::Keep).unwrap() else {
        panic!("block 2 can be claimed");
    };
    assert!(allocated() < 2 * block, "{}", allocated());
    drop(w);
}

/// On tmpfs a transfer's steps are only checked against the free space, never preallocated:
/// fallocate there would take memory for blocks not yet sent (mutation run: `preallocate &&
/// len > 0` as `||` preallocated every step on tmpfs too).
#[test]
fn on_tmpfs_a_transfers_steps_are_checked_not_preallocated() {
    use std::os::unix::fs::MetadataExt;
    let name = "ingest::transfer::tests::on_tmpfs_a_transfers_steps_are_checked_not_preallocated";
    let Some(shm) = super::super::test_dir::tmpfs_for(name) else {
        return; // it ran, and passed, on a tmpfs mounted for it
    };
    let t = TempDir(shm.join(format!("ferry-test-transfer-tmpfs-{}", std::process::id())));
    std::fs::create_dir_all(&t.0).unwrap();
    let catalog = CatalogHandle::open(&t.0, CatalogOptions::default()).unwrap();
    let work = catalog.state_dir().join("ingest").join("shared");
    let ingest = IngestDir::new(catalog.root(), &work).unwrap();
    assert!(ingest.work_on_tmpfs());
    let reg = TransferRegistry::new(Publisher::new(ingest, catalog));
    let spec = TransferSpec {
        size: 4 << 20,
        block_size: 1 << 20,
        expect: Expect::Nothing,
        preallocate: true,
    };
    let a = reg.attach("shm", spec, 1).unwrap();
    let Claim::Write(w) = a.claim(0, Rewrite::Keep).unwrap() else {
        panic!("block 0 can be claimed");
    };
    let part = reg.publisher().ingest().work().join("shm.part");
    assert_eq!(std::fs::metadata(&part).unwrap().blocks(), 0);
    // Granted (the whole 4 MiB: less than a step), promised, not allocated.
    assert_eq!(a.space_promised(), Some(4 << 20));
    drop(w);
}

/// A preallocated step is on disk, so the ledger stops counting it as promised: statvfs already
/// sees it as used, and counting it twice would refuse other transfers space that is there
/// (mutation sample K: `allocated_bytes` as `Ok(0)` or `Ok(1)` left every step promised).
#[test]
fn a_preallocated_step_is_no_longer_promised() {
    let (_t, a, allocated) = four_big_blocks("promised");
    let block = BIG_BLOCK;
    let allocated = allocated();
    assert!(
        allocated >= block,
        "the first step is preallocated: {allocated}"
    );
    assert_eq!(a.space_promised(), Some(0));
    // The next step, taken by a claim, is preallocated and settled the same way.
    let Claim::Write(w0) = a.claim(0, Rewrite::Keep).unwrap() else {
        panic!("block 0 can be claimed");
    };
    let Claim::Write(w1) = a.claim(1, Rewrite::Keep).unwrap() else {
        panic!("block 1 can be claimed");
    };
    assert_eq!(a.space_promised(), Some(0));
    drop((w0, w1));
}

/// A part reopened with blocks held takes space only for what is still missing: the bytes
/// of its missing last block, and nothing once every block is held. (What it had allocated
/// before is its base, so space preallocated by an earlier run is promised again until it is
/// written: conservative, never short.) Mutation run: `size - base` as `+` reserved the held
/// bytes again; `base < size` as `<=` took a step for a part with nothing missing.
#[test]
fn a_reopened_part_takes_space_only_for_what_is_missing() {
    let (_t, reg) = setup("shared-reopen-space");
    let data = content(2 * BS as usize + 100, 3);
    let spec = TransferSpec {
        preallocate: true,
        ..spec_for(&data)
    };
    let a = reg.attach("reopen-space", spec, 1).unwrap();
    for i in 0..2 {
        a.write_blocks(i, block(&data, i), Rewrite::Keep).unwrap();
    }
    a.sync().unwrap();
    drop(a);
    let a = reg.attach("reopen-space", spec, 1).unwrap();
    assert_eq!(a.durable_ranges(8), vec![0..2]);
    assert_eq!(a.space_promised(), Some(100));
    a.write_blocks(2, block(&data, 2), Rewrite::Keep).unwrap();
    a.sync().unwrap();
    drop(a);
    let a = reg.attach("reopen-space", spec, 1).unwrap();
    assert!(a.is_complete());
    assert_eq!(a.space_promised(), Some(0));
}

#[test]
fn a_new_transfer_is_preallocated_or_refused_before_any_byte() {
    use std::os::unix::fs::MetadataExt;
    let (_t, reg) = setup("shared-prealloc");
    let spec = TransferSpec {
        size: 8 << 20,
        block_size: 1 << 20,
        expect: Expect::Nothing,
        preallocate: true,
    };
    let a = reg.attach("big", spec, 1).unwrap();
    let part = reg.publisher().ingest().work().join("big.part");
    let m = std::fs::metadata(&part).unwrap();
    assert_eq!(m.len(), 8 << 20);
    assert!(m.blocks() * 512 >= 8 << 20, "{} blocks", m.blocks());
    drop(a);
    // A petabyte fits no disk here: refused, nothing left behind.
    let huge = TransferSpec {
        size: 1 << 50,
        block_size: 1 << 31,
        ..spec
    };
    let e = reg.attach("huge", huge, 1).unwrap_err();
    assert!(
        matches!(e, TransferError::Ingest(IngestError::NoSpace))
            || e.to_string().contains("too large"),
        "{e}"
    );
    let work = reg.publisher().ingest().work().to_path_buf();
    assert_eq!(list(&work), ["big.bitmap", "big.part"]);
}

#[test]
fn error_display_is_lowercase_and_prefixed() {
    let errs = [
        TransferError::ParameterMismatch { id: "x".into() },
        TransferError::TooManyConnections { max: 8 },
        TransferError::Locked { id: "x".into() },
        TransferError::Incomplete { missing: 1 },
        TransferError::Failed(Arc::new(IngestError::NoSpace)),
        TransferError::InUse { id: "x".into() },
        TransferError::Ingest(IngestError::BadName),
    ];
    for e in errs {
        let s = e.to_string();
        assert!(s.starts_with("transfer: "), "{s}");
    }
    // The ingest error behind a failed or refused transfer is its source (mutation shard
    // 16/40: `source` as None stayed green).
    use std::error::Error;
    let failed = TransferError::Failed(Arc::new(IngestError::NoSpace));
    let ingest = TransferError::Ingest(IngestError::BadName);
    for (e, inner) in [
        (failed, IngestError::NoSpace),
        (ingest, IngestError::BadName),
    ] {
        assert_eq!(e.source().map(ToString::to_string), Some(inner.to_string()));
    }
    assert!(TransferError::Incomplete { missing: 1 }.source().is_none());
}

/// A connection waiting for another's verification waits for its outcome, up to the timeout
/// (whole run, ingest transfer part: the deadline `now + timeout` as `now - timeout` returned
/// `Verifying` at once).
#[test]
fn waiting_for_a_verification_waits_for_its_outcome() {
    let (_t, reg) = setup("shared-wait");
    let data = content(10, 4);
    let a = reg.attach("wait", spec_for(&data), 8).unwrap();
    *lock(&a.phase) = TransferState::Verifying;
    let t0 = Instant::now();
    assert!(matches!(
        a.wait_outcome(Duration::from_millis(200)),
        TransferState::Verifying
    ));
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t0.elapsed()
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            *lock(&a.phase) = TransferState::Open;
            a.phase_changed.notify_all();
        });
        assert!(matches!(
            a.wait_outcome(Duration::from_secs(30)),
            TransferState::Open
        ));
    });
}
