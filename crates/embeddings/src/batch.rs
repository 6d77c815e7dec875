//! Grouping inputs into forward passes: a pure policy.
//!
//! Inputs are sorted by token count so each pass pads as little as possible, then cut into
//! passes of at most `max_batch` inputs. A pass is also cut before an input that would leave
//! more than a third of the pass's positions as padding, once that padding exceeds
//! [`MIN_WASTE`] positions: one long text among short ones then runs on its own instead of
//! making every short one as costly as itself. The attention mask keeps padding out of every real
//! token, so the grouping changes speed, never the vectors (beyond float rounding).

/// Padding positions tolerated in a pass whatever its share: below this a forward pass over
/// the padding costs less than running one more pass.
pub const MIN_WASTE: usize = 256;

/// The passes to run, each a list of indices into `lengths`, shortest inputs first.
pub fn plan(lengths: &[usize], max_batch: usize) -> Vec<Vec<usize>> {
    let max_batch = max_batch.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable, so equal lengths keep their arrival order.
    order.sort_by_key(|&index| lengths[index]);
    let mut passes = Vec::new();
    let mut pass: Vec<usize> = Vec::new();
    let mut real = 0;
    for index in order {
        let length = lengths[index];
        if !pass.is_empty() {
            // Sorted, so `length` is the longest and every other input pads up to it.
            let padded = (pass.len() + 1) * length;
            let waste = padded - (real + length);
            if pass.len() == max_batch || (waste > MIN_WASTE && 3 * waste > padded) {
                passes.push(std::mem::take(&mut pass));
                real = 0;
            }
        }
        pass.push(index);
        real += length;
    }
    if !pass.is_empty() {
        passes.push(pass);
    }
    passes
}

/// Positions computed in a pass that hold padding: the waste the plan minimises.
pub fn padded_positions(lengths: &[usize], passes: &[Vec<usize>]) -> usize {
    passes
        .iter()
        .map(|pass| {
            let longest = pass.iter().map(|&i| lengths[i]).max().unwrap_or(0);
            pass.iter().map(|&i| longest - lengths[i]).sum::<usize>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_runs_exactly_once_in_passes_no_larger_than_the_limit() {
        let lengths = [5, 3, 9, 3, 7, 1, 2];
        let passes = plan(&lengths, 3);
        assert!(passes.iter().all(|pass| pass.len() <= 3));
        let mut seen: Vec<usize> = passes.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
    }

    #[test]
    fn sorting_by_length_pads_less_than_arrival_order() {
        let lengths = [2, 200, 3, 180, 4, 190];
        let arrival: Vec<Vec<usize>> = vec![vec![0, 1], vec![2, 3], vec![4, 5]];
        let sorted = plan(&lengths, 2);
        assert_eq!(sorted, vec![vec![0, 2], vec![4, 3], vec![5, 1]]);
        assert!(padded_positions(&lengths, &sorted) < padded_positions(&lengths, &arrival));
    }

    #[test]
    fn a_long_input_among_short_ones_runs_alone() {
        assert_eq!(plan(&[256, 3, 4, 5], 32), vec![vec![1, 2, 3], vec![0]]);
        // Short inputs of varied lengths stay together: their padding is cheap.
        let short: Vec<usize> = (0..32).map(|i| 5 + i % 11).collect();
        assert_eq!(plan(&short, 32).len(), 1);
        // Long inputs of similar lengths too.
        assert_eq!(plan(&[200, 256, 230, 180], 32).len(), 1);
    }

    #[test]
    fn degenerate_limits_still_make_progress() {
        assert_eq!(plan(&[4, 2], 0), vec![vec![1], vec![0]]);
        assert!(plan(&[], 8).is_empty());
    }
}
