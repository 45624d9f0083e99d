//! The memory backend stays within `memory_max_mib` however many keys arrive. Its own
//! test binary: the resident set measured is this process's, with nothing else running.

use sluice_config::StateConfig;
use sluice_plugin::services::StateService;

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::test]
async fn a_million_distinct_keys_stay_within_the_cap_and_evictions_are_counted() {
    const CAP_MIB: u64 = 8;
    let config = StateConfig {
        memory_max_mib: Some(CAP_MIB),
        ..StateConfig::default()
    };
    let state = StateService::new(&config).expect("memory backend");
    let before = rss();
    let value = vec![b'v'; 32];
    for i in 0..1_000_000u32 {
        let key = format!("client-{i:08}");
        state
            .set("limiter", &key, value.clone(), None)
            .await
            .expect("memory set never fails");
    }
    let grown = rss().saturating_sub(before);
    let held = state.counters.memory_bytes.get() as usize;
    let evicted = state.counters.evictions.get();
    let kept = state.memory_keys().unwrap_or(0);
    eprintln!(
        "kept {kept} keys, accounted {held} bytes, evicted {evicted}, RSS grew {grown} bytes"
    );
    assert!(held <= (CAP_MIB as usize) << 20, "accounted {held} bytes");
    assert_eq!(
        evicted as usize + kept,
        1_000_000,
        "every key is kept or counted as evicted"
    );
    assert!(kept > 10_000, "only {kept} keys kept in {CAP_MIB} MiB");
    // The cap plus a quarter, and 4 MiB of allocator and runtime slack.
    let limit = ((CAP_MIB as usize) << 20) * 5 / 4 + (4 << 20);
    assert!(grown <= limit, "RSS grew {grown} bytes, over {limit}");
    // The newest keys are the ones kept.
    let newest = state.get("limiter", "client-00999999").await.expect("get");
    assert_eq!(newest.as_deref(), Some(&value[..]));
    assert_eq!(
        state.get("limiter", "client-00000000").await.expect("get"),
        None
    );
}
