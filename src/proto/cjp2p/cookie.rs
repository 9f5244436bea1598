//! Ferry's anti-spoofing cookie (cjp2p.md 4.1): `cookie(ip)` is the lowercase hex of the first
//! 4 bytes of SHA-256(`secret` ‖ `ip_text`), 8 characters like the reference's. The cookie is
//! per IP, not per port. Cookies of the current and the previous secret are valid; the secret
//! rotates every `cookie_rotate` (zero: never). No I/O and no randomness: the first secret comes
//! from the caller (32 bytes from the operating system), later ones are derived from it with
//! SHA-256, so they stay unpredictable to anyone who does not know the first.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Length of a cookie string.
pub const COOKIE_LEN: usize = 8;

/// The current and previous secrets and the rotation schedule.
#[derive(Clone)]
pub struct CookieJar {
    current: [u8; 32],
    previous: Option<[u8; 32]>,
    rotate: Duration,
    next_rotation: Option<Instant>,
    generation: u64,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("CookieJar")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// The cookie text; `ip` is canonical (IPv4-mapped IPv6 as IPv4, spec 2), so both forms of an
/// address get the same cookie.
fn compute(secret: &[u8; 32], ip: IpAddr) -> String {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(ip.to_string().as_bytes());
    crate::wire::hex::short(&h.finalize())
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // The length is public (always 8 for a real cookie); the content is compared without an
    // early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl CookieJar {
    pub fn new(secret: [u8; 32], now: Instant, rotate: Duration) -> CookieJar {
        CookieJar {
            current: secret,
            previous: None,
            rotate,
            next_rotation: (!rotate.is_zero()).then(|| now + rotate),
            generation: 0,
        }
    }

    /// Ferry's cookie for `ip` under the current secret.
    pub fn cookie(&self, ip: IpAddr) -> String {
        compute(&self.current, ip.to_canonical())
    }

    /// Whether `s` is ferry's current or previous cookie for `ip` (constant-time compare).
    pub fn is_valid(&self, ip: IpAddr, s: &str) -> bool {
        let ip = ip.to_canonical();
        let cur = ct_eq(compute(&self.current, ip).as_bytes(), s.as_bytes());
        let prev = self
            .previous
            .is_some_and(|p| ct_eq(compute(&p, ip).as_bytes(), s.as_bytes()));
        cur | prev
    }

    /// Rotate if the period has passed; true if it did.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.next_rotation {
            Some(t) if now >= t => {
                self.rotate_now();
                self.next_rotation = Some(now + self.rotate);
                true
            }
            _ => false,
        }
    }

    /// When the next rotation is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_rotation
    }

    /// Replace the current secret by a new one derived from it; the old one stays valid.
    pub fn rotate_now(&mut self) {
        self.generation += 1;
        let mut h = Sha256::new();
        h.update(b"ferry cjp2p cookie rotation");
        h.update(self.current);
        h.update(self.generation.to_be_bytes());
        let next: [u8; 32] = h.finalize().into();
        self.previous = Some(self.current);
        self.current = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c11_keyed_per_ip_current_and_previous_only() {
        let now = Instant::now();
        let rot = Duration::from_secs(3600);
        let mut j = CookieJar::new([7; 32], now, rot);
        // Debug output (logs) never shows a secret.
        assert_eq!(format!("{j:?}"), "CookieJar { generation: 0, .. }");
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let c = j.cookie(ip);
        assert_eq!(c.len(), 8);
        assert!(c
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        // Exactly the first 4 bytes of SHA-256(secret || ip_text).
        let mut h = Sha256::new();
        h.update([7u8; 32]);
        h.update(b"192.0.2.1");
        let d = h.finalize();
        assert_eq!(c, crate::wire::hex::short(&d));
        // Mapped form shares the cookie; another secret or IP differs.
        assert_eq!(j.cookie("::ffff:192.0.2.1".parse().unwrap()), c);
        assert_ne!(j.cookie("192.0.2.2".parse().unwrap()), c);
        assert_ne!(CookieJar::new([8; 32], now, rot).cookie(ip), c);
        assert!(j.is_valid(ip, &c));
        assert!(!j.is_valid(ip, &c.to_uppercase()));
        assert!(!j.is_valid(ip, ""));
        assert!(!j.handle_timeout(now + Duration::from_secs(10)));
        assert!(j.handle_timeout(now + rot));
        assert!(j.is_valid(ip, &c), "previous secret still valid");
        let c2 = j.cookie(ip);
        assert_ne!(c2, c);
        assert!(j.handle_timeout(now + rot * 2));
        assert!(!j.is_valid(ip, &c), "two rotations ago: invalid");
        assert!(j.is_valid(ip, &c2));
        let never = CookieJar::new([7; 32], now, Duration::ZERO);
        assert_eq!(never.poll_timeout(), None);
    }

    /// C11: rotations come one period apart, counted from the rotation, and are numbered.
    #[test]
    fn c11_rotations_are_one_period_apart_and_counted() {
        let now = Instant::now();
        let rot = Duration::from_secs(3600);
        let mut j = CookieJar::new([7; 32], now, rot);
        assert_eq!(j.poll_timeout(), Some(now + rot));
        assert!(j.handle_timeout(now + rot + Duration::from_secs(5)));
        assert_eq!(
            j.poll_timeout(),
            Some(now + rot * 2 + Duration::from_secs(5))
        );
        assert_eq!(format!("{j:?}"), "CookieJar { generation: 1, .. }");
        j.rotate_now();
        assert_eq!(format!("{j:?}"), "CookieJar { generation: 2, .. }");
    }

    /// The compare sees every differing byte: two differences that cancel out under XOR are
    /// still a difference.
    #[test]
    fn ct_eq_sees_every_difference() {
        assert!(ct_eq(b"abcd", b"abcd"));
        assert!(!ct_eq(b"ab", b"ba"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
