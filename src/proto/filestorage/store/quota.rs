//! Per-uid quotas (spec 7.4) as a pure ledger: the driver keeps one [`UidLedger`] per uid behind
//! a lock and calls [`UidLedger::try_reserve`] under it, so concurrent AUTHENTICATIONs cannot
//! jointly pass a limit. Every sum is checked; an overflowing sum is over quota.
//!
//! Life of a file's bytes: reserved at authentication of a new `fid` ([`UidLedger::try_reserve`]),
//! moved to used at completion ([`UidLedger::complete_file`]; the total does not change),
//! released when retention deletes the transfer ([`UidLedger::release`]). A resume reserves
//! nothing. At start the driver rebuilds the ledger from records ([`UidLedger::add_record`]) and
//! partial states ([`UidLedger::add_reservation`]).

use crate::proto::filestorage::json::{parse_object, Object, Value, MAX_INT};
use crate::proto::filestorage::reason::{Code, Reason};
use std::collections::HashMap;

/// One uid's limits (spec 7.4), each with its default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Largest file: 1 GiB.
    pub max_file_size: u64,
    /// Bytes used plus reserved: 1 GiB.
    pub max_bytes: u64,
    /// Files used plus reserved: 10,000.
    pub max_files: u64,
    /// Partial states with an incomplete file: 16.
    pub max_transfers: u64,
    /// Free space left on the store after a reservation: 256 MiB.
    pub min_free: u64,
}

impl Default for QuotaLimits {
    fn default() -> QuotaLimits {
        QuotaLimits {
            max_file_size: 1 << 30,
            max_bytes: 1 << 30,
            max_files: 10_000,
            max_transfers: 16,
            min_free: 256 << 20,
        }
    }
}

/// What one new `fid` holds of a uid's quota until its files complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Reservation {
    pub bytes: u64,
    pub files: u64,
    /// Whether the batch counts against `max_transfers` (it has a file left to receive).
    pub transfer: bool,
}

/// One uid's usage and reservations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UidLedger {
    pub used_bytes: u64,
    pub used_files: u64,
    pub reserved_bytes: u64,
    pub reserved_files: u64,
    pub transfers: u64,
}

impl UidLedger {
    /// Checks a new `fid` whose files still to be stored have `sizes` (empty files included,
    /// files already complete left out), in the order of 7.4, and reserves it when it passes.
    /// `free_bytes` is the store's free space less what is reserved and not yet written (the
    /// driver's to compute: parts are sparse). `transfer` is whether a partial state will hold
    /// an incomplete file.
    pub fn try_reserve(
        &mut self,
        limits: &QuotaLimits,
        sizes: &[u64],
        transfer: bool,
        free_bytes: u64,
    ) -> Result<Reservation, Reason> {
        let exceeded = |what| Reason::with_detail(Code::QuotaExceeded, what);
        if sizes.iter().any(|&s| s > limits.max_file_size) {
            return Err(Reason::with_detail(Code::FileTooBig, limits.max_file_size));
        }
        let bytes = sizes.iter().try_fold(0u64, |acc, &s| acc.checked_add(s));
        let total = bytes
            .and_then(|b| b.checked_add(self.used_bytes))
            .and_then(|b| b.checked_add(self.reserved_bytes));
        if total.is_none_or(|t| t > limits.max_bytes) {
            return Err(exceeded("bytes"));
        }
        let bytes = bytes.unwrap_or(u64::MAX);
        let files = sizes.len() as u64;
        let total_files = self
            .used_files
            .checked_add(self.reserved_files)
            .and_then(|f| f.checked_add(files));
        if total_files.is_none_or(|t| t > limits.max_files) {
            return Err(exceeded("files"));
        }
        if transfer && self.transfers >= limits.max_transfers {
            return Err(exceeded("transfers"));
        }
        if bytes
            .checked_add(limits.min_free)
            .is_none_or(|need| need > free_bytes)
        {
            return Err(exceeded("disk"));
        }
        let r = Reservation {
            bytes,
            files,
            transfer,
        };
        self.add_reservation(r);
        Ok(r)
    }

    /// Adds a reservation without checking (rebuilding at start).
    pub fn add_reservation(&mut self, r: Reservation) {
        self.reserved_bytes = self.reserved_bytes.saturating_add(r.bytes);
        self.reserved_files = self.reserved_files.saturating_add(r.files);
        self.transfers += u64::from(r.transfer);
    }

    /// A file of `size` bytes completed: its reservation becomes usage.
    pub fn complete_file(&mut self, size: u64) {
        self.reserved_bytes = self.reserved_bytes.saturating_sub(size);
        self.reserved_files = self.reserved_files.saturating_sub(1);
        self.add_record(size);
    }

    /// A batch has no incomplete file left (its partial state is deleted).
    pub fn finish_transfer(&mut self) {
        self.transfers = self.transfers.saturating_sub(1);
    }

    /// Retention deleted a partial transfer: what its incomplete files still reserved goes.
    pub fn release(&mut self, remaining: Reservation) {
        self.reserved_bytes = self.reserved_bytes.saturating_sub(remaining.bytes);
        self.reserved_files = self.reserved_files.saturating_sub(remaining.files);
        if remaining.transfer {
            self.finish_transfer();
        }
    }

    /// A record of `size` bytes counts as usage (rebuilding at start, completion).
    pub fn add_record(&mut self, size: u64) {
        self.used_bytes = self.used_bytes.saturating_add(size);
        self.used_files = self.used_files.saturating_add(1);
    }

    /// A record was deleted (`ferry filestorage rm`).
    pub fn remove_record(&mut self, size: u64) {
        self.used_bytes = self.used_bytes.saturating_sub(size);
        self.used_files = self.used_files.saturating_sub(1);
    }
}

/// The limits of every uid: `--quota-file` contents, `{"default":{...},"uids":{"1002":{...}}}`.
/// Keys missing from `default` keep the built-in default; keys missing from a uid's object keep
/// `default`'s.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct QuotaConfig {
    pub default: QuotaLimits,
    pub uids: HashMap<u32, QuotaLimits>,
}

/// A quota file that cannot be used; `what` names the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadQuotaFile {
    pub what: &'static str,
}

impl std::fmt::Display for BadQuotaFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "quota file: bad {}", self.what)
    }
}

impl std::error::Error for BadQuotaFile {}

impl QuotaConfig {
    /// The limits that apply to `uid`.
    pub fn limits_for(&self, uid: u32) -> &QuotaLimits {
        self.uids.get(&uid).unwrap_or(&self.default)
    }

    /// Reads a quota file (strict JSON: duplicates, unknown keys inside a limits object and
    /// non-integers are refused, since a typo there would silently change a limit).
    pub fn parse(json: &[u8]) -> Result<QuotaConfig, BadQuotaFile> {
        let bad = |what| BadQuotaFile { what };
        let obj = parse_object(json).map_err(|_| bad("json"))?;
        let default = match obj.get("default") {
            None => QuotaLimits::default(),
            Some(Value::Object(o)) => limits(o, QuotaLimits::default())?,
            Some(_) => return Err(bad("default")),
        };
        let mut uids = HashMap::new();
        match obj.get("uids") {
            None => {}
            Some(Value::Object(o)) => {
                for key in o.keys() {
                    let uid = key
                        .parse::<u32>()
                        .ok()
                        .filter(|u| u.to_string() == key && *u < 1 << 31)
                        .ok_or(bad("uid"))?;
                    let Some(Value::Object(l)) = o.get(key) else {
                        return Err(bad("uids"));
                    };
                    uids.insert(uid, limits(l, default)?);
                }
            }
            Some(_) => return Err(bad("uids")),
        }
        Ok(QuotaConfig { default, uids })
    }
}

fn limits(o: &Object<'_>, mut base: QuotaLimits) -> Result<QuotaLimits, BadQuotaFile> {
    for key in o.keys() {
        let v = match o.get(key) {
            Some(&Value::Int(v)) if v <= MAX_INT => v,
            _ => return Err(BadQuotaFile { what: "value" }),
        };
        match key {
            "max_file_size" => base.max_file_size = v,
            "max_bytes" => base.max_bytes = v,
            "max_files" => base.max_files = v,
            "max_transfers" => base.max_transfers = v,
            "min_free" => base.min_free = v,
            _ => return Err(BadQuotaFile { what: "key" }),
        }
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const FREE: u64 = 1 << 40;

    fn small() -> QuotaLimits {
        QuotaLimits {
            max_file_size: 100,
            max_bytes: 250,
            max_files: 3,
            max_transfers: 2,
            min_free: 1000,
        }
    }

    fn refuse(l: &mut UidLedger, sizes: &[u64], free: u64) -> String {
        let before = *l;
        let e = l.try_reserve(&small(), sizes, true, free).unwrap_err();
        assert_eq!(*l, before, "a refusal reserves nothing");
        e.to_string()
    }

    #[test]
    fn s30_each_quota_refuses_with_its_reason_in_table_order() {
        let mut l = UidLedger::default();
        assert_eq!(refuse(&mut l, &[101], FREE), "file-too-big: 100");
        assert_eq!(
            refuse(&mut l, &[101, 100, 100, 100], FREE),
            "file-too-big: 100"
        );
        assert_eq!(
            refuse(&mut l, &[100, 100, 51], FREE),
            "quota-exceeded: bytes"
        );
        assert_eq!(refuse(&mut l, &[0, 0, 0, 0], FREE), "quota-exceeded: files");
        assert_eq!(refuse(&mut l, &[10], 1009), "quota-exceeded: disk");
        let r = l.try_reserve(&small(), &[100, 100], true, FREE).unwrap();
        assert_eq!(
            r,
            Reservation {
                bytes: 200,
                files: 2,
                transfer: true
            }
        );
        assert_eq!(refuse(&mut l, &[51], FREE), "quota-exceeded: bytes");
        assert_eq!(refuse(&mut l, &[1, 1], FREE), "quota-exceeded: files");
        l.try_reserve(&small(), &[50], true, FREE).unwrap();
        let mut full = UidLedger {
            transfers: 2,
            ..UidLedger::default()
        };
        assert_eq!(refuse(&mut full, &[1], FREE), "quota-exceeded: transfers");
        // A batch with nothing left to receive does not count as a transfer.
        assert!(full.try_reserve(&small(), &[0], false, FREE).is_ok());
        assert!(
            l.try_reserve(&small(), &[], false, 1000).is_ok(),
            "exactly min_free left"
        );
    }

    #[test]
    fn s30_overflowing_sums_are_over_quota() {
        let huge = QuotaLimits {
            max_file_size: u64::MAX,
            max_bytes: u64::MAX,
            ..small()
        };
        let mut l = UidLedger::default();
        let e = l
            .try_reserve(&huge, &[u64::MAX, 1], true, u64::MAX)
            .unwrap_err();
        assert_eq!(e.to_string(), "quota-exceeded: bytes");
        let mut l = UidLedger {
            used_bytes: u64::MAX,
            ..UidLedger::default()
        };
        assert!(l.try_reserve(&huge, &[1], true, u64::MAX).is_err());
        let mut l = UidLedger {
            used_files: u64::MAX,
            ..UidLedger::default()
        };
        let e = l.try_reserve(
            &QuotaLimits {
                max_files: u64::MAX,
                ..huge
            },
            &[1],
            true,
            u64::MAX,
        );
        assert_eq!(e.unwrap_err().to_string(), "quota-exceeded: files");
        let mut l = UidLedger::default();
        let e = l.try_reserve(
            &QuotaLimits {
                min_free: u64::MAX,
                ..huge
            },
            &[1],
            true,
            u64::MAX,
        );
        assert_eq!(e.unwrap_err().to_string(), "quota-exceeded: disk");
    }

    #[test]
    fn s30_racing_reservations_never_pass_a_limit_together() {
        let limits = QuotaLimits {
            max_bytes: 1000,
            max_files: 1000,
            max_transfers: 1000,
            ..small()
        };
        let ledger = Arc::new(Mutex::new(UidLedger {
            used_bytes: 900,
            ..UidLedger::default()
        }));
        let passed: usize = (0..8)
            .map(|_| {
                let ledger = Arc::clone(&ledger);
                std::thread::spawn(move || {
                    (0..10)
                        .filter(|_| {
                            ledger
                                .lock()
                                .unwrap()
                                .try_reserve(&limits, &[30], true, FREE)
                                .is_ok()
                        })
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(passed, 3, "only 3 x 30 bytes fit in the last 100");
        let l = ledger.lock().unwrap();
        assert_eq!(l.used_bytes + l.reserved_bytes, 990);
    }

    #[test]
    fn s31_completion_moves_reservation_to_usage() {
        let mut l = UidLedger::default();
        let r = l.try_reserve(&small(), &[100, 50], true, FREE).unwrap();
        let total = |l: &UidLedger| {
            (
                l.used_bytes + l.reserved_bytes,
                l.used_files + l.reserved_files,
            )
        };
        assert_eq!(total(&l), (150, 2));
        l.complete_file(100);
        assert_eq!(total(&l), (150, 2));
        assert_eq!((l.used_bytes, l.reserved_bytes), (100, 50));
        // Retention releases what is left of the batch.
        l.release(Reservation {
            bytes: 50,
            files: 1,
            transfer: r.transfer,
        });
        assert_eq!(
            l,
            UidLedger {
                used_bytes: 100,
                used_files: 1,
                ..UidLedger::default()
            }
        );
        // Identical content is charged to each owner: each uid's ledger counts its record.
        let (mut a, mut b) = (UidLedger::default(), UidLedger::default());
        a.add_record(100);
        b.add_record(100);
        assert_eq!((a.used_bytes, b.used_bytes), (100, 100));
        a.remove_record(100);
        assert_eq!(a, UidLedger::default());
        let mut rebuilt = UidLedger::default();
        rebuilt.add_reservation(r);
        assert_eq!((rebuilt.reserved_bytes, rebuilt.transfers), (150, 1));
        rebuilt.finish_transfer();
        assert_eq!(rebuilt.transfers, 0);
    }

    #[test]
    fn s32_retention_frees_what_the_transfer_still_reserved() {
        let mut l = UidLedger::default();
        let r = l.try_reserve(&small(), &[100, 60], true, FREE).unwrap();
        l.complete_file(60);
        // The sweep deletes the partial transfer: the incomplete file's reservation goes.
        l.release(Reservation {
            bytes: r.bytes - 60,
            files: r.files - 1,
            transfer: true,
        });
        assert_eq!(
            l,
            UidLedger {
                used_bytes: 60,
                used_files: 1,
                ..UidLedger::default()
            }
        );
        // Its fid then starts afresh: quotas are checked again.
        assert!(l.try_reserve(&small(), &[100], true, FREE).is_ok());
        let e = l.try_reserve(&small(), &[100], true, FREE).unwrap_err();
        assert_eq!(e.to_string(), "quota-exceeded: bytes");
    }

    #[test]
    fn quota_file() {
        let c = QuotaConfig::parse(
            br#"{"default":{"max_bytes":5000},"uids":{"1002":{"max_files":7}}}"#,
        )
        .unwrap();
        assert_eq!(c.default.max_bytes, 5000);
        assert_eq!(c.default.max_files, 10_000);
        assert_eq!(c.limits_for(1002).max_files, 7);
        assert_eq!(c.limits_for(1002).max_bytes, 5000, "inherits default");
        assert_eq!(c.limits_for(1), &c.default);
        assert_eq!(QuotaConfig::parse(b"{}").unwrap(), QuotaConfig::default());
        // Every key is read, up to the largest exact JSON integer.
        let c = QuotaConfig::parse(
            br#"{"default":{"max_file_size":1,"max_bytes":2,"max_files":3,"max_transfers":4,"min_free":9007199254740991}}"#,
        )
        .unwrap();
        assert_eq!(
            c.default,
            QuotaLimits {
                max_file_size: 1,
                max_bytes: 2,
                max_files: 3,
                max_transfers: 4,
                min_free: MAX_INT,
            }
        );
        assert!(QuotaConfig::parse(br#"{"default":{"min_free":9007199254740992}}"#).is_err());
        for bad in [
            &br#"{"default":{"max_byte":1}}"#[..],
            br#"{"default":{"max_bytes":1.5}}"#,
            br#"{"default":{"max_bytes":-1}}"#,
            br#"{"default":{"max_bytes":1,"max_bytes":2}}"#,
            br#"{"uids":{"x":{}}}"#,
            br#"{"uids":{"01002":{}}}"#,
            br#"{"uids":{"2147483648":{}}}"#,
            br#"{"uids":{"1":3}}"#,
            br#"{"default":[]}"#,
            b"[]",
        ] {
            assert!(
                QuotaConfig::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            BadQuotaFile { what: "key" }.to_string(),
            "quota file: bad key"
        );
    }
}
