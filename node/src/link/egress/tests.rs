use std::time::Duration;

use super::link::Backoff;

#[test]
fn backoff_doubles_to_the_cap_with_bounded_jitter() {
    let mut backoff = Backoff::new();
    let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay(0.0)).collect();
    let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
    backoff.reset();
    assert_eq!(backoff.next_delay(1.0), Duration::from_millis(240));
    assert_eq!(backoff.next_delay(-1.0), Duration::from_millis(320));
    assert_eq!(backoff.next_delay(5.0), Duration::from_millis(960));
}
