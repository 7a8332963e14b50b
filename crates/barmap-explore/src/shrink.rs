//! Delta debugging: from a failing sequence to a short one that still
//! fails. Every candidate is re-run from a fresh state by the caller's
//! `fails` (a fresh device each time).

/// Shrinks `ops` (which fails) to a shorter sequence for which `fails`
/// still holds, with at most `budget` calls of `fails`: first ddmin
/// (removing ever smaller chunks), then single removals until none helps.
pub fn shrink<T: Clone>(
    ops: Vec<T>,
    budget: usize,
    mut fails: impl FnMut(&[T]) -> bool,
) -> (Vec<T>, usize) {
    let mut runs = 0;
    let mut cur = ops;
    let mut n = 2usize;
    while cur.len() >= 2 && runs < budget {
        let chunk = cur.len().div_ceil(n);
        let mut reduced = false;
        let mut start = 0;
        while start < cur.len() && runs < budget {
            let end = (start + chunk).min(cur.len());
            let mut cand = cur[..start].to_vec();
            cand.extend_from_slice(&cur[end..]);
            runs += 1;
            if !cand.is_empty() && fails(&cand) {
                cur = cand;
                reduced = true;
                // Same chunk size, same position: the next chunk slid in.
            } else {
                start = end;
            }
        }
        if reduced {
            n = n.saturating_sub(1).max(2);
        } else if chunk <= 1 {
            break;
        } else {
            n = (n * 2).min(cur.len());
        }
    }
    single_removals(&mut cur, &mut runs, budget, &mut fails);
    (cur, runs)
}

/// Removes single elements while the sequence still fails.
fn single_removals<T: Clone>(
    cur: &mut Vec<T>,
    runs: &mut usize,
    budget: usize,
    fails: &mut impl FnMut(&[T]) -> bool,
) {
    let mut i = 0;
    while i < cur.len() && cur.len() > 1 && *runs < budget {
        let mut cand = cur.clone();
        cand.remove(i);
        *runs += 1;
        if fails(&cand) {
            *cur = cand;
        } else {
            i += 1;
        }
    }
}

/// [`shrink`], then simpler variants of each element (`simpler` lists
/// them, e.g. the first mapping instead of some other one), each followed
/// by single removals: a simpler element often lets others go.
pub fn shrink_and_simplify<T: Clone>(
    ops: Vec<T>,
    budget: usize,
    simpler: impl Fn(&T) -> Vec<T>,
    mut fails: impl FnMut(&[T]) -> bool,
) -> (Vec<T>, usize) {
    let (mut cur, mut runs) = shrink(ops, budget, &mut fails);
    let mut changed = true;
    while changed && runs < budget {
        changed = false;
        for i in 0..cur.len() {
            for v in simpler(&cur[i]) {
                if runs >= budget {
                    break;
                }
                let mut cand = cur.clone();
                cand[i] = v;
                runs += 1;
                if fails(&cand) {
                    cur = cand;
                    changed = true;
                }
            }
            if i + 1 >= cur.len() {
                break;
            }
        }
        if changed {
            single_removals(&mut cur, &mut runs, budget, &mut fails);
        }
        if !changed && cur.len() <= 16 {
            changed = pair_removal(&mut cur, &mut runs, budget, &mut fails);
        }
    }
    (cur, runs)
}

/// Removes one pair of elements (a map and its drop, say) if the rest
/// still fails; returns whether it did.
fn pair_removal<T: Clone>(
    cur: &mut Vec<T>,
    runs: &mut usize,
    budget: usize,
    fails: &mut impl FnMut(&[T]) -> bool,
) -> bool {
    for i in 0..cur.len() {
        for j in i + 1..cur.len() {
            if *runs >= budget || cur.len() <= 2 {
                return false;
            }
            let cand: Vec<T> = cur
                .iter()
                .enumerate()
                .filter(|&(k, _)| k != i && k != j)
                .map(|(_, x)| x.clone())
                .collect();
            *runs += 1;
            if fails(&cand) {
                *cur = cand;
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::shrink;

    #[test]
    fn shrinks_to_the_two_elements_that_together_fail() {
        let ops: Vec<u32> = (0..200).collect();
        let (out, runs) = shrink(ops, 10_000, |s| s.contains(&17) && s.contains(&150));
        assert_eq!(out, vec![17, 150]);
        assert!(runs < 500, "{runs} runs");
    }

    #[test]
    fn order_dependent_failures_keep_their_order() {
        let ops: Vec<u32> = (0..64).collect();
        let fails = |s: &[u32]| {
            let a = s.iter().position(|&x| x == 3);
            let b = s.iter().position(|&x| x == 40);
            matches!((a, b), (Some(a), Some(b)) if a < b)
        };
        assert_eq!(shrink(ops, 10_000, fails).0, vec![3, 40]);
    }

    #[test]
    fn simpler_variants_are_kept_when_the_failure_stays() {
        let ops: Vec<u32> = vec![9, 80, 7];
        let simpler = |x: &u32| if *x > 0 { vec![0, x / 2] } else { vec![] };
        let (out, _) =
            super::shrink_and_simplify(ops, 1_000, simpler, |s| s.iter().any(|&x| x >= 20));
        assert_eq!(out, vec![20]);
    }
}
