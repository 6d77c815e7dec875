//! The two-sample Kolmogorov-Smirnov test: the statistic and its asymptotic p-value.

/// The largest gap between the empirical distribution functions of two samples, both sorted
/// ascending. Ties are stepped over together, so equal values never open a gap.
pub(crate) fn statistic(a: &[f32], b: &[f32]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut gap) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        gap = gap.max((i as f64 / n - j as f64 / m).abs());
    }
    gap
}

/// The probability of a gap at least `statistic` between samples of sizes `n` and `m` drawn from
/// one distribution: Kolmogorov's limiting distribution with Stephens' small-sample correction.
pub(crate) fn p_value(statistic: f64, n: usize, m: usize) -> f64 {
    if n == 0 || m == 0 {
        return 1.0;
    }
    let effective = ((n * m) as f64 / (n + m) as f64).sqrt();
    let lambda = (effective + 0.12 + 0.11 / effective) * statistic;
    kolmogorov_survival(lambda)
}

/// `Q(λ) = 2 Σ (-1)^(k-1) exp(-2 k² λ²)`. The series converges fast except near 0, where Q is 1
/// to double precision anyway.
fn kolmogorov_survival(lambda: f64) -> f64 {
    if lambda < 0.2 {
        return 1.0;
    }
    let mut sum = 0.0;
    let mut sign = 1.0;
    for k in 1..=100 {
        let k = f64::from(k);
        let term = sign * (-2.0 * k * k * lambda * lambda).exp();
        sum += term;
        if term.abs() < 1e-12 {
            break;
        }
        sign = -sign;
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_samples_have_no_gap() {
        let a = [1.0, 2.0, 3.0];
        assert_eq!(statistic(&a, &a), 0.0);
        assert_eq!(p_value(0.0, 3, 3), 1.0);
    }

    #[test]
    fn disjoint_samples_have_a_full_gap() {
        assert_eq!(statistic(&[1.0, 2.0], &[3.0, 4.0, 5.0]), 1.0);
    }

    #[test]
    fn ties_do_not_open_a_gap() {
        assert_eq!(statistic(&[1.0, 1.0, 2.0], &[1.0, 2.0, 2.0]), 1.0 / 3.0);
    }

    #[test]
    fn matches_reference_values() {
        // scipy 1.x: ks_2samp([0.1, 0.4, 0.7, 0.9], [0.2, 0.3, 0.5, 0.6, 0.8]).statistic is
        // 0.3; kstwobign.sf(1.63) is 0.0098464 and kstwobign.sf(1.0) is 0.2699997.
        let d = statistic(&[0.1, 0.4, 0.7, 0.9], &[0.2, 0.3, 0.5, 0.6, 0.8]);
        assert!((d - 0.3).abs() < 1e-6, "{d}");
        assert!((kolmogorov_survival(1.63) - 0.009_846_4).abs() < 1e-6);
        assert!((kolmogorov_survival(1.0) - 0.269_999_7).abs() < 1e-6);
    }

    #[test]
    fn large_gaps_between_large_samples_are_significant() {
        assert!(p_value(0.3, 500, 500) < 1e-10);
        assert!(p_value(0.05, 500, 500) > 0.5);
    }
}
