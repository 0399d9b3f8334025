//! The LSTM layer on Burn's cubecl backend (wgpu): per time step, Burn's autotuned matmul for
//! `h_{t-1} W_h` and one kernel for all the gate math, which writes the step's workspace rows and
//! hidden state in place; the backward is one kernel and one matmul per step, and the recurrent
//! weight's gradient one product after the loop.
//!
//! Composed from Burn ops (even with kernel fusion) a step costs about 16 kernel launches
//! forward and backward together, most of them the backward of the per-step gate slices (a
//! zero fill and a slice-assign per gate); on a GPU those launches, not the arithmetic, set the
//! pace. Here a step is 4 launches. The workspace layout is the flex kernel's:
//! `h | c | i f g o | tanh c` per step and batch row.
//!
//! No kernel reads a buffer it writes through another binding: the previous cell state is read
//! from the workspace (or `c0`) inside the forward kernel, and the backward's running cell
//! gradient alternates between two buffers.

use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, FloatDType, Shape, Slice};
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::calculate_cube_count_elemwise;
use burn_cubecl::cubecl::ir::{ElemType, FloatKind};
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;

use super::{Dims, LayerGradTensors, LstmLayerOps};

/// The element type of every kernel here (the op is f32 only, as on flex).
const F32: ElemType = ElemType::Float(FloatKind::F32);

/// One forward step for every `(b, j)`, `b < batch`, `j < hidden`: gates from
/// `projected[row0 + b] + z[b]`, the cell state after `c_prev` (`c0` at the first step, else the
/// workspace's `c` of the previous step), and the workspace row `row0 + b`, the hidden state
/// `out[row0 + b]` and the cell state `out[c_row0 + b]` written.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn cell_forward<F: Float>(
    projected: &Tensor<F>,
    z: &Tensor<F>,
    c0: &Tensor<F>,
    ws: &mut Tensor<F>,
    out: &mut Tensor<F>,
    row0: u32,
    c_row0: u32,
    #[define(F)] _dtype: ElemType,
) {
    let batch = c0.shape(0);
    let hidden = c0.shape(1);
    if ABSOLUTE_POS >= batch * hidden {
        terminate!();
    }
    let b = ABSOLUTE_POS / hidden;
    let j = ABSOLUTE_POS % hidden;
    let r = row0 as usize + b;
    let one = F::new(1.0);

    let p = r * projected.stride(0) + j * projected.stride(1);
    let p_gate = hidden * projected.stride(1);
    let q = b * z.stride(0) + j * z.stride(1);
    let q_gate = hidden * z.stride(1);
    let zi = projected[p] + z[q];
    let zf = projected[p + p_gate] + z[q + q_gate];
    let zg = projected[p + 2 * p_gate] + z[q + 2 * q_gate];
    let zo = projected[p + 3 * p_gate] + z[q + 3 * q_gate];
    let i = one / (one + (-zi).exp());
    let f = one / (one + (-zf).exp());
    let g = zg.tanh();
    let o = one / (one + (-zo).exp());

    let ws_col = ws.stride(1);
    let c = f * previous_cell(&*ws, c0, row0, b, j) + i * g;
    let tc = c.tanh();
    let h = o * tc;

    let w = r * ws.stride(0) + j * ws_col;
    let w_gate = hidden * ws_col;
    ws[w] = h;
    ws[w + w_gate] = c;
    ws[w + 2 * w_gate] = i;
    ws[w + 3 * w_gate] = f;
    ws[w + 4 * w_gate] = g;
    ws[w + 5 * w_gate] = o;
    ws[w + 6 * w_gate] = tc;
    let (out_row, out_col) = (out.stride(0), out.stride(1));
    out[r * out_row + j * out_col] = h;
    out[(c_row0 as usize + b) * out_row + j * out_col] = c;
}

/// The cell state before the step of rows `row0..`, at batch row `b` and column `j`: `c0` at
/// the first step, else the workspace's `c` of the previous step.
#[cube]
fn previous_cell<F: Float>(ws: &Tensor<F>, c0: &Tensor<F>, row0: u32, b: usize, j: usize) -> F {
    let mut c_prev = c0[b * c0.stride(0) + j * c0.stride(1)];
    if row0 > 0 {
        let r = row0 as usize - c0.shape(0) + b;
        c_prev = ws[r * ws.stride(0) + (c0.shape(1) + j) * ws.stride(1)];
    }
    c_prev
}

/// One backward step for every `(b, j)`: from the workspace row `row0 + b`, the output's
/// gradient `grad[row0 + b]`, the hidden-state gradient from the step after (`dh_next`) and the
/// running cell-state gradient `dc_in`, writes the pre-activation gradient `dz[row0 + b]` and
/// the cell-state gradient before this step into `dc_out`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn cell_backward<F: Float>(
    ws: &Tensor<F>,
    c0: &Tensor<F>,
    grad: &Tensor<F>,
    dh_next: &Tensor<F>,
    dc_in: &Tensor<F>,
    dc_out: &mut Tensor<F>,
    dz: &mut Tensor<F>,
    row0: u32,
    #[define(F)] _dtype: ElemType,
) {
    let batch = c0.shape(0);
    let hidden = c0.shape(1);
    if ABSOLUTE_POS >= batch * hidden {
        terminate!();
    }
    let b = ABSOLUTE_POS / hidden;
    let j = ABSOLUTE_POS % hidden;
    let r = row0 as usize + b;
    let one = F::new(1.0);

    let ws_col = ws.stride(1);
    let w = r * ws.stride(0) + j * ws_col;
    let w_gate = hidden * ws_col;
    let i = ws[w + 2 * w_gate];
    let f = ws[w + 3 * w_gate];
    let g = ws[w + 4 * w_gate];
    let o = ws[w + 5 * w_gate];
    let tc = ws[w + 6 * w_gate];
    let c_prev = previous_cell(ws, c0, row0, b, j);

    let dh = grad[r * grad.stride(0) + j * grad.stride(1)]
        + dh_next[b * dh_next.stride(0) + j * dh_next.stride(1)];
    let dc = dc_in[b * dc_in.stride(0) + j * dc_in.stride(1)] + dh * o * (one - tc * tc);

    let d = r * dz.stride(0) + j * dz.stride(1);
    let d_gate = hidden * dz.stride(1);
    dz[d] = dc * g * i * (one - i);
    dz[d + d_gate] = dc * c_prev * f * (one - f);
    dz[d + 2 * d_gate] = dc * i * (one - g * g);
    dz[d + 3 * d_gate] = dh * tc * o * (one - o);
    let dc_at = b * dc_out.stride(0) + j * dc_out.stride(1);
    dc_out[dc_at] = dc * f;
}

/// The `[rows, cols]` of a 2-d tensor, checked to be f32.
fn dims2(t: &CubeTensor, what: &str) -> (usize, usize) {
    let shape = t.meta.shape();
    assert_eq!(
        shape.num_dims(),
        2,
        "the fused ops take {what} with 2 dimensions"
    );
    assert_eq!(t.dtype, DType::F32, "the fused ops are f32 only ({what})");
    (shape[0], shape[1])
}

/// A new contiguous f32 tensor of `shape` on `like`'s device, its values unset.
fn empty(like: &CubeTensor, shape: [usize; 2]) -> CubeTensor {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::new(shape),
        DType::F32,
    )
}

/// Rows `rows` and columns `cols` of `t`, a view.
fn view(t: &CubeTensor, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> CubeTensor {
    CubeBackend::float_slice(t.clone(), &[Slice::from(rows), Slice::from(cols)])
}

/// Launch grid for one thread per `(b, j)`.
fn grid(t: &CubeTensor, d: Dims) -> (CubeCount, CubeDim) {
    let n = d.batch * d.hidden;
    let cube_dim = CubeDim::new(&t.client, n);
    (
        calculate_cube_count_elemwise(&t.client, n, cube_dim),
        cube_dim,
    )
}

impl LstmLayerOps for CubeBackend {
    fn lstm_layer_forward(
        projected: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let d = Dims::forward(
            dims2(&projected, "projected inputs"),
            dims2(&w_h, "recurrent weights"),
            bias.meta.shape()[0],
            dims2(&h0, "h0"),
            dims2(&c0, "c0"),
        );
        let rows = d.steps * d.batch;
        // The bias added to every step's projections at once: one kernel, not one a step.
        let gates = Shape::new([rows, 4 * d.hidden]);
        let bias = Self::float_reshape(bias, Shape::new([1, 4 * d.hidden]));
        let projected = Self::float_add(projected, Self::float_expand(bias, gates));
        let out = empty(&projected, [rows + d.batch, d.hidden]);
        let ws = empty(&projected, [rows, 7 * d.hidden]);
        let (count, dim) = grid(&projected, d);
        let mut h = h0;
        for t in 0..d.steps {
            let z = Self::float_matmul(h, w_h.clone());
            let row0 = t * d.batch;
            cell_forward::launch(
                &projected.client,
                count.clone(),
                dim,
                projected.clone().into_tensor_arg(),
                z.into_tensor_arg(),
                c0.clone().into_tensor_arg(),
                ws.clone().into_tensor_arg(),
                out.clone().into_tensor_arg(),
                row0 as u32,
                rows as u32,
                F32,
            );
            h = view(&out, row0..row0 + d.batch, 0..d.hidden);
        }
        (out, ws)
    }

    fn lstm_layer_backward(
        ws: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        state_grads: bool,
    ) -> LayerGradTensors<Self> {
        let d = Dims::backward(
            dims2(&ws, "workspace"),
            dims2(&w_h, "recurrent weights"),
            dims2(&h0, "h0"),
            dims2(&c0, "c0"),
            dims2(&grad, "gradient"),
        );
        let (rows, batch, hidden) = (d.steps * d.batch, d.batch, d.hidden);

        let dz = empty(&ws, [rows, 4 * hidden]);
        let dc_bufs = [empty(&ws, [batch, hidden]), empty(&ws, [batch, hidden])];
        let w_t = Self::float_transpose(w_h.clone());
        let (count, dim) = grid(&ws, d);
        let mut dh_next =
            Self::float_zeros(Shape::new([batch, hidden]), &ws.device, FloatDType::F32);
        let mut dc_in = view(&grad, rows..rows + batch, 0..hidden);
        for t in (0..d.steps).rev() {
            let row0 = t * batch;
            let dc_out = dc_bufs[t % 2].clone();
            cell_backward::launch(
                &ws.client,
                count.clone(),
                dim,
                ws.clone().into_tensor_arg(),
                c0.clone().into_tensor_arg(),
                grad.clone().into_tensor_arg(),
                dh_next.into_tensor_arg(),
                dc_in.into_tensor_arg(),
                dc_out.clone().into_tensor_arg(),
                dz.clone().into_tensor_arg(),
                row0 as u32,
                F32,
            );
            dh_next = if t > 0 || state_grads {
                Self::float_matmul(view(&dz, row0..row0 + batch, 0..4 * hidden), w_t.clone())
            } else {
                Self::float_zeros(Shape::new([batch, hidden]), &ws.device, FloatDType::F32)
            };
            dc_in = dc_out;
        }
        let dc0 = dc_in;

        // dW_h = sum_t h_{t-1}^T dz_t: h0 with the first step, the workspace's h with the rest.
        let mut dw = Self::float_matmul(
            Self::float_transpose(h0),
            view(&dz, 0..batch, 0..4 * hidden),
        );
        if d.steps > 1 {
            let hs = view(&ws, 0..rows - batch, 0..hidden);
            let rest = Self::float_matmul(
                Self::float_transpose(hs),
                view(&dz, batch..rows, 0..4 * hidden),
            );
            dw = Self::float_add(dw, rest);
        }
        let db = Self::float_reshape(Self::float_sum_dim(dz.clone(), 0), Shape::new([4 * hidden]));
        (dz, dw, db, dh_next, dc0)
    }
}
