use super::*;
use crate::autodiff::COTANGENT;
use crate::explain::step::{self, Slot, StepLayout, StepRun};

/// One point of shape [2, 3] and nothing held fixed.
fn layout() -> StepLayout {
    StepLayout {
        points: vec![Slot {
            name: "x".into(),
            shape: vec![2, 3],
        }],
        fixed_f32: Vec::new(),
        fixed_i64: Vec::new(),
        stacked_f32: false,
        stacked_i64: false,
    }
}

fn step_merge() -> Merge {
    Merge::Paths(layout().rules())
}

fn f32s(shape: &[i64], values: Vec<f32>) -> TensorData {
    TensorData::f32(shape.to_vec(), values)
}

fn outputs(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A step job of one path (input values `fill`, baseline 0) over `alphas` and `targets`,
/// with distinct weights so a misplaced block shows.
fn step_job(
    fill: f32,
    alphas: &[f64],
    targets: &[usize],
    sums: usize,
) -> Vec<(String, TensorData)> {
    let input = vec![fill; 6];
    let baseline = vec![0.0; 6];
    let rows = alphas.len() * targets.len();
    let weights = (0..sums * rows).map(|i| fill + i as f32).collect();
    StepRun {
        input: &input,
        baseline: &baseline,
        shape: &[2, 3],
        fixed_f32: &[],
        fixed_i64: &[],
        fixed_f32_shape: &[],
        fixed_i64_shape: &[],
        alphas,
        targets,
        classes: 4,
        weights,
    }
    .inputs(&layout())
}

fn input<'a>(inputs: &'a Inputs, name: &str) -> &'a TensorData {
    get(inputs, name).unwrap()
}

#[test]
fn should_concatenate_forward_inputs_and_split_outputs_by_batch() {
    let a = vec![(
        "x".to_string(),
        f32s(&[2, 3], (0..6).map(|v| v as f32).collect()),
    )];
    let b = vec![("x".to_string(), f32s(&[1, 3], vec![10.0, 11.0, 12.0]))];
    let out = outputs(&["y"]);
    assert!(Merge::Forward.compatible((&a, &out), (&b, &out)));
    assert_eq!((Merge::Forward.rows(&a), Merge::Forward.rows(&b)), (2, 1));
    let merged = Merge::Forward.merge(&[&a, &b]);
    assert_eq!(merged[0].1.shape, vec![3, 3]);
    assert_eq!(
        merged[0].1.as_f32().unwrap(),
        &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 11.0, 12.0]
    );
    // An output of two values per row: rows 0-1 are a's, row 2 is b's.
    let y = f32s(&[3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let split = Merge::Forward.split(&[&a, &b], &out, vec![y]).unwrap();
    assert_eq!(split[0], vec![f32s(&[2, 2], vec![1.0, 2.0, 3.0, 4.0])]);
    assert_eq!(split[1], vec![f32s(&[1, 2], vec![5.0, 6.0])]);
}

#[test]
fn should_refuse_to_split_an_output_whose_batch_is_not_the_jobs() {
    let a = vec![("x".to_string(), f32s(&[2, 1], vec![0.0, 1.0]))];
    let b = vec![("x".to_string(), f32s(&[1, 1], vec![2.0]))];
    // A model that reduces over the batch returns one row, not three.
    let y = f32s(&[1, 1], vec![3.0]);
    assert!(Merge::Forward
        .split(&[&a, &b], &outputs(&["y"]), vec![y])
        .is_none());
}

#[test]
fn should_not_merge_jobs_that_differ_in_shape_type_or_outputs() {
    let job = |shape: &[i64]| {
        let n = shape.iter().product::<i64>() as usize;
        vec![("x".to_string(), f32s(shape, vec![0.0; n]))]
    };
    let out = outputs(&["y"]);
    let a = job(&[1, 3]);
    assert!(!Merge::Forward.compatible((&a, &out), (&job(&[1, 4]), &out)));
    assert!(!Merge::Forward.compatible((&a, &out), (&a, &outputs(&["y", "z"]))));
    let ints = vec![(
        "x".to_string(),
        TensorData {
            shape: vec![1, 3],
            values: Values::I64(vec![0; 3]),
        },
    )];
    assert!(!Merge::Forward.compatible((&a, &out), (&ints, &out)));
    // Two inputs that disagree on the batch can't be cut back into jobs.
    let mut ragged = job(&[2, 3]);
    ragged.push(("mask".to_string(), f32s(&[1, 3], vec![0.0; 3])));
    assert!(!Merge::Forward.mergeable(&ragged));
    assert!(!Merge::Off.compatible((&a, &out), (&a, &out)));
}

#[test]
fn should_stack_paths_offset_ig_path_and_lay_weights_block_diagonally() {
    let a = step_job(1.0, &[0.0, 0.5], &[2], 2);
    let b = step_job(3.0, &[0.25, 0.75, 1.0], &[0, 1], 2);
    let out = outputs(&[step::STEP_SUMS, step::STEP_ABS]);
    assert!(step_merge().compatible((&a, &out), (&b, &out)));
    assert_eq!((step_merge().rows(&a), step_merge().rows(&b)), (2, 6));
    let merged = step_merge().merge(&[&a, &b]);

    let x = input(&merged, step::STEP_INPUT);
    assert_eq!(x.shape, vec![2, 2, 3]);
    assert_eq!(&x.as_f32().unwrap()[..6], &[1.0; 6]);
    assert_eq!(&x.as_f32().unwrap()[6..], &[3.0; 6]);
    assert_eq!(
        input(&merged, step::STEP_PATH).values,
        Values::I64(vec![0, 0, 1, 1, 1, 1, 1, 1])
    );
    assert_eq!(input(&merged, COTANGENT).shape, vec![8, 4]);
    assert_eq!(input(&merged, step::STEP_ALPHA).shape, vec![8, 1, 1]);

    // The property the sums rely on: merged weights x the stacked rows give each job's own
    // weights x its own rows, for any per-row gradients.
    let weights = input(&merged, step::STEP_WEIGHTS);
    assert_eq!(weights.shape, vec![4, 8]);
    let grads: Vec<f32> = (0..8).map(|r| (r * r) as f32 - 2.5).collect();
    let product = |w: &TensorData, g: &[f32]| -> Vec<f32> {
        let (s, r) = (w.shape[0] as usize, w.shape[1] as usize);
        let w = w.as_f32().unwrap();
        (0..s)
            .map(|i| (0..r).map(|k| w[i * r + k] * g[k]).sum())
            .collect()
    };
    let together = product(weights, &grads);
    let alone_a = product(input(&a, step::STEP_WEIGHTS), &grads[..2]);
    let alone_b = product(input(&b, step::STEP_WEIGHTS), &grads[2..]);
    assert_eq!(together, [alone_a, alone_b].concat());
}

#[test]
fn should_split_step_sums_by_sums_and_rows_outputs_by_rows() {
    let a = step_job(1.0, &[0.0, 1.0], &[0], 2);
    let b = step_job(2.0, &[0.5], &[1, 3], 2);
    let out = outputs(&[step::STEP_SUMS, step::STEP_ABS]);
    let sums = f32s(&[4, 6], (0..24).map(|v| v as f32).collect());
    let abs = f32s(&[4, 1], vec![7.0, 8.0, 9.0, 10.0]);
    let split = step_merge()
        .split(&[&a, &b], &out, vec![sums, abs])
        .unwrap();
    assert_eq!(split[0][0].shape, vec![2, 6]);
    assert_eq!(split[1][0].as_f32().unwrap()[0], 12.0);
    assert_eq!(split[0][1], f32s(&[2, 1], vec![7.0, 8.0]));
    assert_eq!(split[1][1], f32s(&[2, 1], vec![9.0, 10.0]));
}

#[test]
fn should_not_merge_step_jobs_with_a_stray_path_or_other_inputs() {
    let out = outputs(&[step::STEP_SUMS]);
    let good = step_job(1.0, &[0.5], &[0], 2);
    let mut stray = good.clone();
    stray[2].1.values = Values::I64(vec![1]);
    assert!(step_merge().mergeable(&good));
    assert!(!step_merge().mergeable(&stray));
    let mut extra = good.clone();
    extra.push(("mask".to_string(), f32s(&[1], vec![0.0])));
    assert!(!step_merge().compatible((&good, &out), (&extra, &out)));
    let wider = step_job(1.0, &[0.5], &[0], 2)
        .into_iter()
        .map(|(n, t)| match n.as_str() {
            step::STEP_INPUT | step::STEP_BASELINE => (n, f32s(&[1, 3, 2], vec![0.0; 6])),
            _ => (n, t),
        })
        .collect::<Vec<_>>();
    assert!(!step_merge().compatible((&good, &out), (&wider, &out)));
}
