//! Choosing a server: smooth weighted round robin, least requests in flight (power of
//! two choices), and consistent hashing (a ring of virtual nodes, so adding or removing
//! one of N servers moves about 1/N of the keys).
//!
//! Every balancer takes `usable(i)`: the candidates for this try (available, of the
//! right tier, not tried already). Pure apart from its own counters, so it is tested
//! alone.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use sluice_config::Balance;

/// Virtual nodes per unit of weight on the hash ring.
const RING_POINTS_PER_WEIGHT: u32 = 160;

pub enum Selector {
    /// Equal weights: a counter.
    RoundRobin(AtomicUsize),
    /// Smooth weighted round robin (nginx's): current weights per server.
    Weighted {
        weights: Vec<i64>,
        current: Mutex<Vec<i64>>,
    },
    LeastConn {
        weights: Vec<u32>,
        seed: AtomicU64,
    },
    /// Sorted (point, server) pairs.
    Hash {
        ring: Vec<(u64, usize)>,
    },
}

impl Selector {
    pub fn new(balance: Balance, weights: &[u32]) -> Self {
        match balance {
            Balance::RoundRobin | Balance::Weighted if weights.iter().all(|w| *w == 1) => {
                Selector::RoundRobin(AtomicUsize::new(0))
            }
            Balance::RoundRobin | Balance::Weighted => Selector::Weighted {
                weights: weights.iter().map(|w| i64::from(*w)).collect(),
                current: Mutex::new(vec![0; weights.len()]),
            },
            Balance::LeastConn => Selector::LeastConn {
                weights: weights.to_vec(),
                seed: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            },
            Balance::IpHash | Balance::Hash => Selector::Hash {
                ring: ring(weights),
            },
        }
    }

    /// A server among those `usable`; `key` picks the place on the ring (hash
    /// balancers; without a key they fall back to round robin over the ring's order).
    /// `in_flight(i)` feeds least-conn.
    pub fn pick(
        &self,
        count: usize,
        usable: impl Fn(usize) -> bool,
        in_flight: impl Fn(usize) -> usize,
        key: Option<&[u8]>,
    ) -> Option<usize> {
        match self {
            Selector::RoundRobin(next) => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..count).map(|k| (start + k) % count).find(|i| usable(*i))
            }
            Selector::Weighted { weights, current } => {
                let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
                let mut total = 0;
                let mut best: Option<usize> = None;
                for i in 0..count {
                    if !usable(i) {
                        continue;
                    }
                    current[i] += weights[i];
                    total += weights[i];
                    if best.is_none_or(|b| current[i] > current[b]) {
                        best = Some(i);
                    }
                }
                if let Some(b) = best {
                    current[b] -= total;
                }
                best
            }
            Selector::LeastConn { weights, seed } => {
                let candidates: Vec<usize> = (0..count).filter(|i| usable(*i)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    n => {
                        let r = splitmix(seed.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed));
                        let a = candidates[(r % n as u64) as usize];
                        let mut b = candidates[((r >> 32) % (n as u64 - 1)) as usize];
                        if b == a {
                            b = candidates[n - 1];
                        }
                        // Fewer in flight per unit of weight wins: a*wb <= b*wa.
                        let load = |i: usize| in_flight(i) as u64;
                        let (wa, wb) = (u64::from(weights[a]), u64::from(weights[b]));
                        Some(if load(a) * wb <= load(b) * wa { a } else { b })
                    }
                }
            }
            Selector::Hash { ring } => {
                if ring.is_empty() {
                    return None;
                }
                let start = match key {
                    Some(key) => {
                        let h = hash64(key);
                        ring.partition_point(|(point, _)| *point < h)
                    }
                    // No key: spread over the ring.
                    None => {
                        (splitmix(ring.len() as u64 ^ now_nanos()) % ring.len().max(1) as u64)
                            as usize
                    }
                };
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1)
                    .find(|i| usable(*i))
            }
        }
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

fn ring(weights: &[u32]) -> Vec<(u64, usize)> {
    let mut ring = Vec::new();
    for (i, w) in weights.iter().enumerate() {
        for v in 0..RING_POINTS_PER_WEIGHT * w {
            // The server's index and the virtual node number name the point; the address
            // is not used, so a server keeps its points whatever its neighbours are called.
            ring.push((hash64(format!("{i}-{v}").as_bytes()), i));
        }
    }
    ring.sort_unstable();
    ring
}

/// FNV-1a, then a 64-bit finalizer: stable across runs and versions (keys stay on the
/// same server across restarts).
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(h)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(
        selector: &Selector,
        n: usize,
        picks: usize,
        key: impl Fn(usize) -> Vec<u8>,
    ) -> Vec<usize> {
        let mut counts = vec![0; n];
        for p in 0..picks {
            let k = key(p);
            let i = selector
                .pick(n, |_| true, |_| 0, (!k.is_empty()).then_some(&k[..]))
                .unwrap();
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_is_even_and_skips_unusable() {
        let s = Selector::new(Balance::RoundRobin, &[1, 1, 1]);
        assert_eq!(shares(&s, 3, 300, |_| vec![]), vec![100, 100, 100]);
        for _ in 0..10 {
            assert_ne!(s.pick(3, |i| i != 1, |_| 0, None), Some(1));
        }
        assert_eq!(s.pick(3, |_| false, |_| 0, None), None);
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let s = Selector::new(Balance::Weighted, &[5, 1, 1]);
        let order: Vec<usize> = (0..7)
            .map(|_| s.pick(3, |_| true, |_| 0, None).unwrap())
            .collect();
        assert_eq!(order, vec![0, 0, 1, 0, 2, 0, 0], "nginx's smooth sequence");
        assert_eq!(shares(&s, 3, 700, |_| vec![]), vec![500, 100, 100]);
    }

    #[test]
    fn least_conn_prefers_idle_servers() {
        let s = Selector::new(Balance::LeastConn, &[1, 1, 1]);
        let busy = [10, 0, 10];
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[s.pick(3, |_| true, |i| busy[i], None).unwrap()] += 1;
        }
        // Server 1 wins every draw it is in (2 of 3 draws).
        assert!(counts[1] > 170, "{counts:?}");
        // Equal load: within 5 % of an even share (6 standard deviations).
        let even = shares(&s, 3, 30_000, |_| vec![]);
        assert!(even.iter().all(|c| (9_500..10_500).contains(c)), "{even:?}");
    }

    #[test]
    fn hashing_is_sticky_spread_and_moves_few_keys() {
        let four = Selector::new(Balance::Hash, &[1, 1, 1, 1]);
        let key = |p: usize| format!("user-{p}").into_bytes();
        let counts = shares(&four, 4, 8000, key);
        assert!(
            counts.iter().all(|c| (1500..2500).contains(c)),
            "{counts:?}"
        );
        let place = |s: &Selector, n: usize, k: &[u8], usable: &dyn Fn(usize) -> bool| {
            s.pick(n, usable, |_| 0, Some(k)).unwrap()
        };
        // Sticky: the same key, the same server.
        for p in 0..100 {
            let k = key(p);
            assert_eq!(
                place(&four, 4, &k, &|_| true),
                place(&four, 4, &k, &|_| true)
            );
        }
        // Server 3 gone (unusable): only its keys move.
        let mut moved = 0;
        for p in 0..4000 {
            let k = key(p);
            let before = place(&four, 4, &k, &|_| true);
            let after = place(&four, 4, &k, &|i| i != 3);
            if before != 3 {
                assert_eq!(before, after, "a key on a remaining server stays");
            } else {
                moved += 1;
            }
        }
        assert!(moved < 4000 / 3, "{moved} of 4000 keys moved");
        // Removing one of 4 servers from the config (a 3-server ring) moves about 1/4.
        let three = Selector::new(Balance::Hash, &[1, 1, 1]);
        let moved = (0..4000)
            .filter(|p| {
                let k = key(*p);
                place(&four, 4, &k, &|_| true) != place(&three, 3, &k, &|_| true)
            })
            .count();
        assert!(moved < 4000 / 3, "{moved} of 4000 keys moved");
    }
}
