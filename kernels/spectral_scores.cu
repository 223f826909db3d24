// Spectral-signature scores (Tran et al. 2018): for each sample i of class c = labels[i],
//   score_i = ((f_i - mean_c) . v_c)^2
// with mean_c the class mean and v_c the top right-singular vector of the centred class
// features. features (n, d) float32, labels (n,) int64, means and vectors (classes, d)
// float32. One block per sample, reduction over d in shared memory.
// NumPy twin: pudrt.scores.spectral.projection_scores.

#define BLOCK 128

extern "C" __global__ void projection_scores(const float* __restrict__ features, const long long* __restrict__ labels,
                                             const float* __restrict__ means, const float* __restrict__ vectors,
                                             float* __restrict__ out, int n, int d, int classes) {
    __shared__ float shared[BLOCK];
    int i = blockIdx.x;
    if (i >= n) return;
    long long c = labels[i];
    if (c < 0 || c >= classes) {  // not a class we have statistics for
        if (threadIdx.x == 0) out[i] = NAN;
        return;
    }
    const float* f = features + (long long)i * d;
    const float* mu = means + c * d;
    const float* v = vectors + c * d;
    float acc = 0.f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) acc += (f[j] - mu[j]) * v[j];
    shared[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[i] = shared[0] * shared[0];
}
