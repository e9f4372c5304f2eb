// edgekd::MultiScaleFeatureDiff as a C++ TensorRT IPluginV3 shared library, for programs that do not run Python:
// trtexec (--staticPlugins=libedgekd_plugin.so), Triton's TensorRT backend and DeepStream (custom-lib-path).
// The kernels are engines/kernels/feature_diff.cu, included here and compiled once by nvcc; this file holds only
// the TensorRT interface and the host-side launch sequence, which mirrors edgekd/fused/cuda_kernels.py
// (KernelSequence.launch, LaunchPlan) launch for launch. Attribute names and meaning: edgekd/fused/spec.py.
//
// Build: see engines/plugin/CMakeLists.txt (needs the TensorRT C++ headers, e.g. JetPack or a TensorRT tarball).

#include "../kernels/feature_diff.cu"

#include <NvInferRuntime.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace edgekd {

constexpr char kName[] = "MultiScaleFeatureDiff";
constexpr char kVersion[] = "1";
constexpr char kNamespace[] = "";
constexpr size_t kAlign = 256;

struct Spec {
    int out_h = 0, out_w = 0;
    int combine = COMBINE_ADD;
    std::vector<float> weights;
    float sigma = 4.f;
    bool topk_score = false;
    int topk = 100;
    float eps = 1e-8f;
    bool has_threshold = false;
    float threshold = 0.f;
    int map_stride = 1;  // a node without the attribute predates it: combined and blurred at output size

    int grid_h() const { return std::max(1, out_h / map_stride); }  // scoring.grid_size
    int grid_w() const { return std::max(1, out_w / map_stride); }
    bool upsamples() const { return grid_h() != out_h || grid_w() != out_w; }
    float grid_sigma() const {  // scoring.grid_sigma: the blur left after the final upsample's own smoothing
        if (sigma <= 0.f) return 0.f;
        float const stride = (float)map_stride;
        float const rest = sigma * sigma - (map_stride > 1 ? stride * stride / 6.f : 0.f);
        return rest > 0.f ? std::sqrt(rest) / stride : 0.f;
    }
    int radius() const { return grid_sigma() > 0.f ? std::max(1, (int)std::ceil(4.0 * grid_sigma())) : 0; }  // scoring.blur_radius
    int outputs() const { return has_threshold ? 3 : 2; }
};

static size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// Workspace: one FP32 distance map per scale, the row-blurred grid, the blurred grid when it is upsampled, the
// score bits (LaunchPlan.offsets).
struct Layout {
    std::vector<size_t> distance;
    size_t rows = 0, blurred = 0, score_bits = 0, total = 0;
    Layout(Spec const& spec, int batch, int scales, PluginTensorDesc const* in) {
        size_t at = 0;
        for (int i = 0; i < scales; ++i) {
            distance.push_back(at);
            at += aligned((size_t)batch * in[i].dims.d[2] * in[i].dims.d[3] * 4);
        }
        size_t const grid = aligned((size_t)batch * spec.grid_h() * spec.grid_w() * 4);
        rows = at;
        at += grid;
        blurred = at;
        at += spec.upsamples() ? grid : 0;
        score_bits = at;
        total = at + aligned((size_t)batch * 4);
    }
};

class Plugin : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
public:
    explicit Plugin(Spec spec) : spec_(std::move(spec)) {}

    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        if (type == PluginCapabilityType::kBUILD) return static_cast<IPluginV3OneBuild*>(this);
        if (type == PluginCapabilityType::kRUNTIME) return static_cast<IPluginV3OneRuntime*>(this);
        return static_cast<IPluginV3OneCore*>(this);
    }
    IPluginV3* clone() noexcept override {
        auto* copy = new Plugin(spec_);
        copy->scales_ = scales_;
        return copy;
    }

    char const* getPluginName() const noexcept override { return kName; }
    char const* getPluginVersion() const noexcept override { return kVersion; }
    char const* getPluginNamespace() const noexcept override { return kNamespace; }

    int32_t getNbOutputs() const noexcept override { return spec_.outputs(); }
    int32_t configurePlugin(DynamicPluginTensorDesc const*, int32_t nbInputs, DynamicPluginTensorDesc const*,
                            int32_t) noexcept override {
        scales_ = nbInputs / 2;
        return 0;
    }
    int32_t getOutputDataTypes(DataType* out, int32_t nbOutputs, DataType const*, int32_t) const noexcept override {
        for (int i = 0; i < nbOutputs; ++i) out[i] = i == 2 ? DataType::kUINT8 : DataType::kFLOAT;
        return 0;
    }
    int32_t getOutputShapes(DimsExprs const* in, int32_t, DimsExprs const*, int32_t, DimsExprs* out, int32_t nbOutputs,
                            IExprBuilder& expr) noexcept override {
        for (int i = 0; i < nbOutputs; ++i) {
            if (i == 1) {
                out[i].nbDims = 1;
                out[i].d[0] = in[0].d[0];
                continue;
            }
            out[i].nbDims = 4;
            out[i].d[0] = in[0].d[0];
            out[i].d[1] = expr.constant(1);
            out[i].d[2] = expr.constant(spec_.out_h);
            out[i].d[3] = expr.constant(spec_.out_w);
        }
        return 0;
    }
    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbInputs, int32_t) noexcept override {
        PluginTensorDesc const& desc = io[pos].desc;
        if (desc.format != TensorFormat::kLINEAR) return false;
        if (pos < nbInputs) {
            int scales = nbInputs / 2;
            if (pos >= scales) return desc.type == io[pos - scales].desc.type;
            return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
        }
        return desc.type == (pos - nbInputs == 2 ? DataType::kUINT8 : DataType::kFLOAT);
    }
    size_t getWorkspaceSize(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*,
                            int32_t) const noexcept override {
        std::vector<PluginTensorDesc> largest(nbInputs);
        for (int i = 0; i < nbInputs; ++i) {
            largest[i] = in[i].desc;
            largest[i].dims = in[i].max;
        }
        return Layout(spec_, (int)in[0].max.d[0], nbInputs / 2, largest.data()).total;
    }

    int32_t onShapeChange(PluginTensorDesc const*, int32_t nbInputs, PluginTensorDesc const*, int32_t) noexcept override {
        scales_ = nbInputs / 2;  // T0..Tk-1, S0..Sk-1
        return 0;
    }
    IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }

    int32_t enqueue(PluginTensorDesc const* inDesc, PluginTensorDesc const*, void const* const* inputs,
                    void* const* outputs, void* workspace, cudaStream_t stream) noexcept override {
        int const scales = scales_;
        int const batch = (int)inDesc[0].dims.d[0];
        Layout layout(spec_, batch, scales, inDesc);
        char* ws = static_cast<char*>(workspace);
        ScaleMaps maps{};
        for (int i = 0; i < scales; ++i) {  // stage 1, one pass over T and S per scale
            int const channels = (int)inDesc[i].dims.d[1], h = (int)inDesc[i].dims.d[2], w = (int)inDesc[i].dims.d[3];
            long long const pixels = (long long)batch * h * w;
            float* distance = reinterpret_cast<float*>(ws + layout.distance[i]);
            dim3 grid((unsigned)((pixels + COS_PIXELS - 1) / COS_PIXELS)), block(COS_PIXELS, COS_SPLIT);
            if (inDesc[i].type == DataType::kHALF)
                edgekd_cosine_distance_f16<<<grid, block, 0, stream>>>(static_cast<unsigned short const*>(inputs[i]),
                    static_cast<unsigned short const*>(inputs[i + scales]), distance, channels, h * w, pixels, spec_.eps);
            else
                edgekd_cosine_distance_f32<<<grid, block, 0, stream>>>(static_cast<float const*>(inputs[i]),
                    static_cast<float const*>(inputs[i + scales]), distance, channels, h * w, pixels, spec_.eps);
            maps.maps[i] = distance;
            maps.height[i] = h;
            maps.width[i] = w;
            maps.weight[i] = spec_.weights.empty() ? 1.f : spec_.weights[i];
        }
        maps.count = scales;
        maps.combine = spec_.combine;
        int const radius = spec_.radius(), H = spec_.out_h, W = spec_.out_w, gh = spec_.grid_h(), gw = spec_.grid_w();
        float const sigma = spec_.grid_sigma();
        int const reflect = std::min(gh, gw) > radius ? 1 : 0;  // scoring.blur_reflects
        float* rows = reinterpret_cast<float*>(ws + layout.rows);
        size_t const rowShared = 4 * ((2 * radius + 1) + ROW_TILE + 2 * radius);
        size_t const colShared = 4 * ((2 * radius + 1) + COL_TILE * (COL_TILE + 2 * radius));
        edgekd_combine_blur_rows<<<dim3((gw + ROW_TILE - 1) / ROW_TILE, gh, batch), ROW_TILE, rowShared, stream>>>(
            maps, rows, gh, gw, radius, sigma, reflect);
        int* bits = spec_.topk_score ? nullptr : reinterpret_cast<int*>(ws + layout.score_bits);
        float* amap = static_cast<float*>(outputs[0]);
        float* scores = static_cast<float*>(outputs[1]);
        unsigned char* mask = spec_.has_threshold ? static_cast<unsigned char*>(outputs[2]) : nullptr;
        if (bits) edgekd_init_scores<<<(batch + 255) / 256, 256, 0, stream>>>(bits, batch);
        bool const up = spec_.upsamples();  // the column pass writes the outputs itself when the grid is the output
        float* blurred = up ? reinterpret_cast<float*>(ws + layout.blurred) : amap;
        edgekd_blur_cols_score<<<dim3((gw + COL_TILE - 1) / COL_TILE, (gh + COL_TILE - 1) / COL_TILE, batch),
                                 dim3(COL_TILE, COL_ROWS), colShared, stream>>>(
            rows, blurred, up ? nullptr : mask, up ? nullptr : bits, gh, gw, radius, sigma, reflect, spec_.threshold);
        if (up)
            edgekd_upsample_score<<<dim3((W + UP_TILE - 1) / UP_TILE, (H + UP_ROWS - 1) / UP_ROWS, batch),
                                    dim3(UP_TILE, UP_ROWS), 0, stream>>>(blurred, gh, gw, amap, mask, bits, H, W,
                                                                         spec_.threshold);
        if (bits)
            edgekd_finish_max_scores<<<(batch + 255) / 256, 256, 0, stream>>>(bits, scores, batch);
        else
            edgekd_topk_mean<<<batch, TOPK_THREADS, 0, stream>>>(amap, scores, H * W, std::min(spec_.topk, H * W));
        return cudaPeekAtLastError() == cudaSuccess ? 0 : 1;
    }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override {
        fields_.clear();
        size_[0] = spec_.out_h;
        size_[1] = spec_.out_w;
        combine_ = combineName(spec_.combine);
        score_ = spec_.topk_score ? "topk" : "max";
        fields_.emplace_back("output_size", size_, PluginFieldType::kINT32, 2);
        fields_.emplace_back("combine", combine_.c_str(), PluginFieldType::kCHAR, (int32_t)combine_.size() + 1);
        if (!spec_.weights.empty())
            fields_.emplace_back("weights", spec_.weights.data(), PluginFieldType::kFLOAT32, (int32_t)spec_.weights.size());
        fields_.emplace_back("sigma", &spec_.sigma, PluginFieldType::kFLOAT32, 1);
        fields_.emplace_back("score", score_.c_str(), PluginFieldType::kCHAR, (int32_t)score_.size() + 1);
        fields_.emplace_back("topk", &spec_.topk, PluginFieldType::kINT32, 1);
        fields_.emplace_back("eps", &spec_.eps, PluginFieldType::kFLOAT32, 1);
        if (spec_.has_threshold) fields_.emplace_back("threshold", &spec_.threshold, PluginFieldType::kFLOAT32, 1);
        fields_.emplace_back("map_stride", &spec_.map_stride, PluginFieldType::kINT32, 1);
        collection_.nbFields = (int32_t)fields_.size();
        collection_.fields = fields_.data();
        return &collection_;
    }

    static char const* combineName(int mode) {
        return mode == COMBINE_MUL ? "mul" : mode == COMBINE_MAX ? "max" : mode == COMBINE_WEIGHTED ? "weighted" : "add";
    }

private:
    Spec spec_;
    int scales_ = 0;
    int32_t size_[2]{};
    std::string combine_, score_;
    std::vector<PluginField> fields_;
    PluginFieldCollection collection_{};
};

class Creator : public IPluginCreatorV3One {
public:
    Creator() {
        fields_ = {PluginField("output_size", nullptr, PluginFieldType::kINT32, 2),
                   PluginField("combine", nullptr, PluginFieldType::kCHAR, 0),
                   PluginField("weights", nullptr, PluginFieldType::kFLOAT32, 0),
                   PluginField("sigma", nullptr, PluginFieldType::kFLOAT32, 1),
                   PluginField("score", nullptr, PluginFieldType::kCHAR, 0),
                   PluginField("topk", nullptr, PluginFieldType::kINT32, 1),
                   PluginField("eps", nullptr, PluginFieldType::kFLOAT32, 1),
                   PluginField("threshold", nullptr, PluginFieldType::kFLOAT32, 1),
                   PluginField("map_stride", nullptr, PluginFieldType::kINT32, 1)};
        collection_.nbFields = (int32_t)fields_.size();
        collection_.fields = fields_.data();
    }

    IPluginV3* createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
        Spec spec;
        for (int i = 0; fc && i < fc->nbFields; ++i) {
            PluginField const& f = fc->fields[i];
            std::string const name(f.name);
            if (name == "output_size" && f.length >= 2) {
                spec.out_h = static_cast<int32_t const*>(f.data)[0];
                spec.out_w = static_cast<int32_t const*>(f.data)[1];
            } else if (name == "combine") {
                std::string const mode(static_cast<char const*>(f.data), strnlen(static_cast<char const*>(f.data), f.length));
                spec.combine = mode == "mul" ? COMBINE_MUL : mode == "max" ? COMBINE_MAX
                             : mode == "weighted" ? COMBINE_WEIGHTED : COMBINE_ADD;
            } else if (name == "weights") {
                auto const* w = static_cast<float const*>(f.data);
                spec.weights.assign(w, w + f.length);
            } else if (name == "sigma") {
                spec.sigma = *static_cast<float const*>(f.data);
            } else if (name == "score") {
                spec.topk_score = std::string(static_cast<char const*>(f.data), strnlen(static_cast<char const*>(f.data), f.length)) == "topk";
            } else if (name == "topk") {
                spec.topk = *static_cast<int32_t const*>(f.data);
            } else if (name == "eps") {
                spec.eps = *static_cast<float const*>(f.data);
            } else if (name == "map_stride") {
                spec.map_stride = *static_cast<int32_t const*>(f.data);
            } else if (name == "threshold") {
                spec.has_threshold = true;
                spec.threshold = *static_cast<float const*>(f.data);
            }
        }
        if (spec.out_h <= 0 || spec.out_w <= 0 || spec.map_stride < 1) return nullptr;  // output_size is required
        return new Plugin(spec);
    }
    PluginFieldCollection const* getFieldNames() noexcept override { return &collection_; }
    char const* getPluginName() const noexcept override { return kName; }
    char const* getPluginVersion() const noexcept override { return kVersion; }
    char const* getPluginNamespace() const noexcept override { return kNamespace; }

private:
    std::vector<PluginField> fields_;
    PluginFieldCollection collection_{};
};

}  // namespace edgekd

// Static registration: loading the library (trtexec --staticPlugins, Triton, DeepStream's custom-lib-path) registers it.
using EdgekdMultiScaleFeatureDiffCreator = edgekd::Creator;
REGISTER_TENSORRT_PLUGIN(EdgekdMultiScaleFeatureDiffCreator);
