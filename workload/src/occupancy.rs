//! The arithmetic behind `queue_occupancy`: the admitted count, averaged over time.
//!
//! An instant sample of the queue misreads demand: pods are scraped at different instants and clients
//! hop between pods, so one sample can catch a pod a whole request above or below its load. The mean
//! over the time since the previous scrape does not (Knative's queue-proxy reports the same way).
//! Pure: every call is given its instant, so tests choose the clock.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Checkpoints per window: the span averaged over is at most a tenth longer than the window.
const CHECKPOINTS_PER_WINDOW: u32 = 10;

/// The integral of the admitted count from the start up to `at`, in admitted × nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Checkpoint {
    at: Instant,
    area: u128,
}

/// The time-weighted mean of the admitted count (running + waiting) over the last `window`.
///
/// The count is constant between two calls of [`OccupancyWindow::changed`], so its integral over
/// time is exact. The integral is kept at checkpoints on a fixed grid, every `spacing = window / 10`
/// from the start; [`OccupancyWindow::average`] divides the integral since the newest checkpoint at or
/// before `now - window` by the time since it. That is the exact mean over a span of at least
/// `window` and less than `window + spacing` (over the whole age while the process is younger than
/// the window). A grid instant that no call fell on is filled in later from the count, which was
/// constant in between, and grid instants too old to matter are skipped in one step, so a quiet
/// spell costs nothing. At most `window / spacing + 2` checkpoints are held, in a `VecDeque`
/// allocated once: no call allocates.
#[derive(Debug)]
pub struct OccupancyWindow {
    window: Duration,
    spacing: Duration,
    /// The count since `last`.
    admitted: usize,
    /// Up to when `area` is integrated.
    last: Instant,
    /// The integral from the start up to `last`, exact in integers: u128 does not overflow in any
    /// process's lifetime.
    area: u128,
    /// Oldest first: the newest one at or before `last - window` (the base), then every later one.
    checkpoints: VecDeque<Checkpoint>,
    /// The grid instant of the next checkpoint.
    next_checkpoint: Instant,
}

impl OccupancyWindow {
    /// An empty queue at `start`, averaged over `window` (at least 1 ns).
    pub fn new(window: Duration, start: Instant) -> Self {
        assert!(!window.is_zero(), "the occupancy window must not be empty");
        let spacing = (window / CHECKPOINTS_PER_WINDOW).max(Duration::from_nanos(1));
        let mut checkpoints = VecDeque::with_capacity(Self::most_checkpoints(window, spacing));
        checkpoints.push_back(Checkpoint { at: start, area: 0 });
        Self {
            window,
            spacing,
            admitted: 0,
            last: start,
            area: 0,
            checkpoints,
            next_checkpoint: start + spacing,
        }
    }

    /// The grid instants in `(now - window - spacing, now]`, plus the one pushed before the oldest is
    /// dropped.
    fn most_checkpoints(window: Duration, spacing: Duration) -> usize {
        window.as_nanos().div_ceil(spacing.as_nanos()) as usize + 2
    }

    /// Records that `admitted` requests are in the queue from `now` on.
    pub fn changed(&mut self, now: Instant, admitted: usize) {
        self.advance(now);
        self.admitted = admitted;
    }

    /// The mean admitted count over the span that ends at `now` (see the type's documentation).
    pub fn average(&mut self, now: Instant) -> f64 {
        self.advance(now);
        let base = self.checkpoints[0];
        let span = (self.last - base.at).as_nanos();
        if span == 0 {
            return self.admitted as f64;
        }
        (self.area - base.area) as f64 / span as f64
    }

    /// Integrates up to `now` and moves the checkpoints along.
    fn advance(&mut self, now: Instant) {
        // Never backwards: the integral up to `last` is already counted.
        let now = now.max(self.last);
        let horizon = now.checked_sub(self.window);
        // Grid instants at or before `now - window - spacing` can never be the base: jump to the last of
        // them, so that the loop below runs at most `window / spacing + 2` times after any gap.
        if let Some(stale) = horizon.and_then(|horizon| horizon.checked_sub(self.spacing))
            && self.next_checkpoint < stale
        {
            let spacing = self.spacing.as_nanos();
            let missed = (stale - self.next_checkpoint).as_nanos() / spacing;
            self.next_checkpoint += Duration::from_nanos((missed * spacing) as u64);
        }
        while self.next_checkpoint <= now {
            let at = self.next_checkpoint;
            self.checkpoints.push_back(Checkpoint {
                at,
                area: self.area_at(at),
            });
            self.next_checkpoint += self.spacing;
            self.drop_before_base(horizon);
        }
        self.area = self.area_at(now);
        self.last = now;
        self.drop_before_base(horizon);
    }

    /// The integral up to `at`, not before `last`: the count has been `admitted` since `last`.
    fn area_at(&self, at: Instant) -> u128 {
        self.area + self.admitted as u128 * (at - self.last).as_nanos()
    }

    /// Drops the checkpoints older than the newest one at or before `horizon`.
    fn drop_before_base(&mut self, horizon: Option<Instant>) {
        let Some(horizon) = horizon else { return };
        while self
            .checkpoints
            .get(1)
            .is_some_and(|next| next.at <= horizon)
        {
            self.checkpoints.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(5);

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// A window and its start, the count set to each `(ms after the start, admitted)` in turn.
    fn window_with(changes: &[(u64, usize)]) -> (Instant, OccupancyWindow) {
        let start = Instant::now();
        let mut window = OccupancyWindow::new(WINDOW, start);
        for &(at, admitted) in changes {
            window.changed(start + ms(at), admitted);
        }
        (start, window)
    }

    #[test]
    fn a_constant_count_averages_to_that_count() {
        let (start, mut window) = window_with(&[(0, 3)]);
        for at in [ms(1), ms(2_500), ms(5_000), ms(12_345), ms(60_000)] {
            assert_eq!(window.average(start + at), 3.0, "at {at:?}");
        }
    }

    #[test]
    fn a_step_halfway_through_the_window_averages_to_the_mean() {
        let (start, mut window) = window_with(&[(0, 1), (7_500, 3)]);
        // The window is [5 s, 10 s]: 1 for its first half, 3 for its second.
        assert_eq!(window.average(start + ms(10_000)), 2.0);
    }

    #[test]
    fn a_process_younger_than_the_window_averages_over_its_age() {
        let (start, mut window) = window_with(&[]);
        assert_eq!(window.average(start), 0.0, "no time has passed: the count");
        window.changed(start, 2);
        window.changed(start + ms(1_000), 0);
        assert_eq!(window.average(start + ms(2_000)), 1.0);
        assert_eq!(window.average(start + ms(4_000)), 0.5);
    }

    #[test]
    fn old_history_falls_out_of_the_window() {
        let (start, mut window) = window_with(&[(0, 4), (10_000, 1)]);
        assert_eq!(window.average(start + ms(15_000)), 1.0);
        // Scraped rarely, then a quiet spell of an hour: the hour is all that counts.
        window.changed(start + ms(20_000), 0);
        assert_eq!(window.average(start + ms(3_620_000)), 0.0);
    }

    /// Against a brute-force mean over a recorded step function: with calls at random instants, the
    /// average is the exact mean since the grid instant at or before `now - window`.
    #[test]
    fn the_average_is_exact_over_the_span_the_grid_gives() {
        let start = Instant::now();
        let spacing = WINDOW / CHECKPOINTS_PER_WINDOW;
        let mut window = OccupancyWindow::new(WINDOW, start);
        let mut steps: Vec<(Duration, usize)> = vec![(Duration::ZERO, 0)];
        let mut seed: u64 = 0x5eed;
        let mut random = |bound: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) % bound
        };
        let mut at = Duration::ZERO;
        for _ in 0..2_000 {
            // Mostly short gaps, sometimes one longer than the window.
            at += if random(20) == 0 {
                ms(random(12_000))
            } else {
                ms(random(300))
            };
            if random(3) == 0 {
                let average = window.average(start + at);
                let elapsed = at.as_nanos();
                let base = elapsed.checked_sub(WINDOW.as_nanos()).map_or(0, |horizon| {
                    horizon / spacing.as_nanos() * spacing.as_nanos()
                });
                let expected = mean(&steps, base, elapsed);
                assert_eq!(average, expected, "at {at:?}");
            } else {
                let admitted = random(8) as usize;
                window.changed(start + at, admitted);
                steps.push((at, admitted));
            }
        }
    }

    /// The mean of a step function (each count from its instant on) over `[from, to]`, in ns.
    fn mean(steps: &[(Duration, usize)], from: u128, to: u128) -> f64 {
        if from == to {
            return steps.last().unwrap().1 as f64;
        }
        let mut area = 0u128;
        for (i, &(at, admitted)) in steps.iter().enumerate() {
            let end = steps
                .get(i + 1)
                .map_or(to, |next| next.0.as_nanos().min(to));
            let begin = at.as_nanos().max(from);
            if end > begin {
                area += admitted as u128 * (end - begin);
            }
        }
        area as f64 / (to - from) as f64
    }

    #[test]
    fn checkpoints_stay_bounded_after_hours_of_changes() {
        let start = Instant::now();
        let mut window = OccupancyWindow::new(WINDOW, start);
        let capacity = window.checkpoints.capacity();
        let most = OccupancyWindow::most_checkpoints(WINDOW, window.spacing);
        let mut at = Duration::ZERO;
        // Two hours of a change every 7 ms, a scrape every 5 s, and quiet spells of up to 90 s.
        for i in 0u64..1_000_000 {
            at += if i % 100_000 == 0 { ms(i / 10) } else { ms(7) };
            window.changed(start + at, (i % 5) as usize);
            if i % 714 == 0 {
                window.average(start + at);
            }
            assert!(
                window.checkpoints.len() <= most,
                "{}",
                window.checkpoints.len()
            );
        }
        assert!(at > Duration::from_secs(2 * 3600), "{at:?}");
        assert_eq!(window.checkpoints.capacity(), capacity, "never reallocated");
    }
}
