// Row-wise KL(softmax(a) || softmax(b)) for (rows, k) float32 logits, computed stably:
//   log p = a - lse(a),  log q = b - lse(b),  KL = sum_j p_j (log p_j - log q_j).
// One block per row; the reductions over k run in shared memory, so any k works
// (1 class, 10, 1000). NumPy twin: pudrt.scores.kl.kl_rows.

#define BLOCK 256

__device__ float block_reduce_max(float v, float* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] = fmaxf(shared[threadIdx.x], shared[threadIdx.x + s]);
        __syncthreads();
    }
    float r = shared[0];
    __syncthreads();
    return r;
}

__device__ float block_reduce_sum(float v, float* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    float r = shared[0];
    __syncthreads();
    return r;
}

extern "C" __global__ void kl_rows(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ out, int rows, int k) {
    __shared__ float shared[BLOCK];
    int row = blockIdx.x;
    if (row >= rows) return;
    const float* ar = a + (long long)row * k;
    const float* br = b + (long long)row * k;

    float ma = -INFINITY, mb = -INFINITY;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        ma = fmaxf(ma, ar[j]);
        mb = fmaxf(mb, br[j]);
    }
    ma = block_reduce_max(ma, shared);
    mb = block_reduce_max(mb, shared);

    float sa = 0.f, sb = 0.f;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        sa += __expf(ar[j] - ma);
        sb += __expf(br[j] - mb);
    }
    sa = block_reduce_sum(sa, shared);
    sb = block_reduce_sum(sb, shared);
    float lse_a = ma + logf(sa), lse_b = mb + logf(sb);

    float kl = 0.f;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        float log_p = ar[j] - lse_a;
        float log_q = br[j] - lse_b;
        kl += __expf(log_p) * (log_p - log_q);
    }
    kl = block_reduce_sum(kl, shared);
    if (threadIdx.x == 0) out[row] = fmaxf(kl, 0.f);  // KL >= 0; rounding can dip below
}
