// ONNX Runtime for the sandbox's Triton: a native Triton backend (libtriton_onnxruntime.so), CPU only.
//
// Why it exists. The PyPI Triton build that runs here (nvidia-pytriton 0.7.0, tritonserver 2.51) has only the
// Python backend; NVIDIA's image, which hospitals run, has a native onnxruntime backend. Serving ONNX through a
// Python model made every tensor cross a process boundary twice each way (Triton -> shared memory -> the Python
// stub's numpy array -> onnxruntime -> numpy -> shared memory -> Triton) and made the sandbox measure the stub
// rather than Triton. This backend runs in the server process like NVIDIA's does: onnxruntime reads the request's
// tensor where Triton's gRPC front end put it (no copy when a batch is one request) and writes its outputs straight
// into the response (copied once instead, when their shapes cannot be known before the run). The same triton_repo/
// loads unchanged here and on NVIDIA's image.
//
// What it does.
// - Runs `<model_dir>/<version>/<default_model_filename or model.onnx>` with onnxruntime's CPU provider, the
//   libonnxruntime from the same onnxruntime wheel as the worker's in-process LocalOnnxBackend.
// - Honours config.pbtxt's input and output names and datatypes. Every config needs full input/output blocks (no
//   auto-complete), each naming a tensor of the ONNX file with the same element type; anything else is refused at
//   load with the names it found. BYTES (string) tensors are refused too.
// - max_batch_size > 0: the requests of one dynamic batch are joined along axis 0 into ONE onnxruntime run and the
//   outputs split back (requests may carry different batch sizes). Requests that cannot be joined (different
//   non-batch dims) run in separate groups; a joined run that fails is retried request by request, so one bad
//   request fails alone.
// - Threads: config `parameters { key: "intra_op_thread_count" value: { string_value: "N" } }` (and
//   `inter_op_thread_count`) as for NVIDIA's backend; by default the CPUs this process may use divided among the
//   model's CPU instances (`instance_group` counts), so several instances do not oversubscribe the cores.
// - Spinning: onnxruntime's intra-op threads busy-wait for work by default. Inside Triton they would take the cores
//   that Triton's gRPC threads need to move the next request's tensors, so they sleep instead unless the config
//   sets `parameters { key: "allow_spinning" value: { string_value: "1" } }`.
// - Memory: `enable_mem_pattern` and `enable_mem_arena` parameters ("0" or "1", default "1"), as NVIDIA's backend
//   reads them.
// - Outputs in place: when every output dim of the ONNX file is fixed or named like an input dim ("slices",
//   "rows"...), a batch of one request gets its outputs made in the response before the run, once a first run has
//   shown those shapes to hold; if they ever stop holding, that request fails with onnxruntime's reason and the
//   instance copies outputs after the run from then on.
// - Reports Triton's per-request and per-batch statistics (nv_inference_* metrics, the statistics API).
//
// Built by `scripts/sandbox install` (g++, nlohmann-json from Debian); see triton_backend_api.h and ort_api.h for
// how the two C APIs are reached without their headers.

#include <sched.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "ort_api.h"
#include "triton_backend_api.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

namespace {

using json = nlohmann::json;

constexpr uint32_t kOrtApiVersion = 16;  // every entry used here exists since API 5; a library serves older APIs too
OrtApiTable ort;
OrtEnv* ort_env = nullptr;

// ---------------------------------------------------------------------------------------------------------------
// errors and logging
// ---------------------------------------------------------------------------------------------------------------

// An error on its way to a Triton error; thrown inside, turned into TRITONSERVER_Error at the C boundary.
struct Failure : std::runtime_error {
  TRITONSERVER_Error_Code code;
  Failure(TRITONSERVER_Error_Code c, const std::string& msg) : std::runtime_error(msg), code(c) {}
};

void Log(TRITONSERVER_LogLevel level, const std::string& msg) {
  if (TRITONSERVER_Error* e = TRITONSERVER_LogMessage(level, __FILE__, __LINE__, msg.c_str())) {
    TRITONSERVER_ErrorDelete(e);
  }
}

void Check(OrtStatus* status, const std::string& what) {
  if (status == nullptr) return;
  std::string msg = what + ": " + ort.GetErrorMessage(status);
  ort.ReleaseStatus(status);
  throw Failure(TRITONSERVER_ERROR_INTERNAL, msg);
}

void Check(TRITONSERVER_Error* error, const std::string& what) {
  if (error == nullptr) return;
  std::string msg = what + ": " + TRITONSERVER_ErrorMessage(error);
  TRITONSERVER_ErrorDelete(error);
  throw Failure(TRITONSERVER_ERROR_INTERNAL, msg);
}

template <typename F>
TRITONSERVER_Error* Guard(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const Failure& f) {
    return TRITONSERVER_ErrorNew(f.code, f.what());
  } catch (const std::exception& e) {
    return TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL, e.what());
  }
}

uint64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// ---------------------------------------------------------------------------------------------------------------
// datatypes: config.pbtxt name, Triton type, ONNX element type, bytes per element
// ---------------------------------------------------------------------------------------------------------------

struct DataType {
  const char* config;
  const char* triton;
  TRITONSERVER_DataType triton_type;
  ONNXTensorElementDataType onnx;
  size_t size;
};

constexpr DataType kDataTypes[] = {
    {"TYPE_BOOL", "BOOL", TRITONSERVER_TYPE_BOOL, ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL, 1},
    {"TYPE_UINT8", "UINT8", TRITONSERVER_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, 1},
    {"TYPE_UINT16", "UINT16", TRITONSERVER_TYPE_UINT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16, 2},
    {"TYPE_UINT32", "UINT32", TRITONSERVER_TYPE_UINT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32, 4},
    {"TYPE_UINT64", "UINT64", TRITONSERVER_TYPE_UINT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64, 8},
    {"TYPE_INT8", "INT8", TRITONSERVER_TYPE_INT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, 1},
    {"TYPE_INT16", "INT16", TRITONSERVER_TYPE_INT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16, 2},
    {"TYPE_INT32", "INT32", TRITONSERVER_TYPE_INT32, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 4},
    {"TYPE_INT64", "INT64", TRITONSERVER_TYPE_INT64, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, 8},
    {"TYPE_FP16", "FP16", TRITONSERVER_TYPE_FP16, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, 2},
    {"TYPE_FP32", "FP32", TRITONSERVER_TYPE_FP32, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, 4},
    {"TYPE_FP64", "FP64", TRITONSERVER_TYPE_FP64, ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE, 8},
    {"TYPE_BF16", "BF16", TRITONSERVER_TYPE_BF16, ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, 2},
};

const DataType* FromConfig(const std::string& name) {
  for (const DataType& t : kDataTypes) {
    if (name == t.config) return &t;
  }
  return nullptr;
}

const char* TritonName(TRITONSERVER_DataType type) {
  for (const DataType& t : kDataTypes) {
    if (type == t.triton_type) return t.triton;
  }
  return type == TRITONSERVER_TYPE_BYTES ? "BYTES" : "an unknown datatype";
}

const char* OnnxName(ONNXTensorElementDataType type) {
  for (const DataType& t : kDataTypes) {
    if (type == t.onnx) return t.config;
  }
  return type == ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING ? "a string tensor" : "an element type Triton cannot carry";
}

// Bytes of a tensor of `shape` (no negative dims) and type `type`.
uint64_t ByteSize(const std::vector<int64_t>& shape, const DataType& type) {
  uint64_t elements = 1;
  for (int64_t d : shape) elements *= static_cast<uint64_t>(d);
  return elements * type.size;
}

std::string ShapeText(const int64_t* dims, size_t n) {
  std::string s = "[";
  for (size_t i = 0; i < n; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// ---------------------------------------------------------------------------------------------------------------
// the model: what config.pbtxt says
// ---------------------------------------------------------------------------------------------------------------

struct TensorSpec {
  std::string name;
  const DataType* type;
};

struct ModelState {
  std::string name;
  std::string onnx_path;
  std::string onnx_file;
  int max_batch_size = 0;
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  int intra_op_threads = 1;
  int inter_op_threads = 1;
  bool spinning = false;
  bool mem_pattern = true;
  bool mem_arena = true;
};

std::string Parameter(const json& config, const std::string& key) {
  auto params = config.find("parameters");
  if (params == config.end() || !params->is_object()) return "";
  auto p = params->find(key);
  if (p == params->end() || !p->is_object()) return "";
  return p->value("string_value", "");
}

int UsableCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return 1;
}

int CpuInstances(const json& config) {
  int count = 0;
  for (const json& group : config.value("instance_group", json::array())) {
    if (group.value("kind", std::string("KIND_CPU")) == "KIND_CPU") count += group.value("count", 1);
  }
  return std::max(1, count);
}

int PositiveInt(const std::string& model, const std::string& key, const std::string& value) {
  try {
    size_t used = 0;
    int n = std::stoi(value, &used);
    if (used == value.size() && n > 0) return n;
  } catch (const std::exception&) {
  }
  throw Failure(TRITONSERVER_ERROR_INVALID_ARG, model + ": parameter " + key + " is '" + value +
                                                    "', expected a whole number of threads above 0");
}

// A "0"/"1" parameter, as NVIDIA's onnxruntime backend reads enable_mem_pattern and enable_mem_arena.
bool Flag(const std::string& model, const json& config, const std::string& key, bool otherwise) {
  std::string value = Parameter(config, key);
  if (value.empty()) return otherwise;
  if (value == "0" || value == "false") return false;
  if (value == "1" || value == "true") return true;
  throw Failure(TRITONSERVER_ERROR_INVALID_ARG, model + ": parameter " + key + " is '" + value + "', expected 0 or 1");
}

std::vector<TensorSpec> Tensors(const std::string& model, const json& config, const char* section) {
  std::vector<TensorSpec> specs;
  for (const json& t : config.value(section, json::array())) {
    std::string name = t.value("name", "");
    std::string type = t.value("data_type", "");
    const DataType* dt = FromConfig(type);
    if (dt == nullptr) {
      throw Failure(TRITONSERVER_ERROR_UNSUPPORTED,
                    model + ": " + section + " '" + name + "' is " + type +
                        "; this backend carries fixed-size numeric tensors only (no TYPE_STRING)");
    }
    specs.push_back({name, dt});
  }
  return specs;
}

std::unique_ptr<ModelState> ReadModel(TRITONBACKEND_Model* model) {
  auto state = std::make_unique<ModelState>();
  const char* name = nullptr;
  uint64_t version = 0;
  TRITONBACKEND_ArtifactType artifact;
  const char* location = nullptr;
  Check(TRITONBACKEND_ModelName(model, &name), "model name");
  Check(TRITONBACKEND_ModelVersion(model, &version), "model version");
  Check(TRITONBACKEND_ModelRepository(model, &artifact, &location), "model repository");
  state->name = name;

  TRITONSERVER_Message* message = nullptr;
  Check(TRITONBACKEND_ModelConfig(model, 1, &message), state->name + ": model configuration");
  const char* base = nullptr;
  size_t size = 0;
  json config;
  TRITONSERVER_Error* err = TRITONSERVER_MessageSerializeToJson(message, &base, &size);
  if (err == nullptr) config = json::parse(base, base + size, nullptr, false);
  if (TRITONSERVER_Error* e = TRITONSERVER_MessageDelete(message)) TRITONSERVER_ErrorDelete(e);
  Check(err, state->name + ": model configuration");
  if (!config.is_object()) throw Failure(TRITONSERVER_ERROR_INTERNAL, state->name + ": model configuration is not JSON");

  std::string file = config.value("default_model_filename", "");
  state->onnx_file = file.empty() ? "model.onnx" : file;
  state->onnx_path = std::string(location) + "/" + std::to_string(version) + "/" + state->onnx_file;
  struct stat st;
  if (stat(state->onnx_path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    throw Failure(TRITONSERVER_ERROR_NOT_FOUND, state->name + ": ONNX file " + state->onnx_path + " not found");
  }
  state->max_batch_size = config.value("max_batch_size", 0);
  state->inputs = Tensors(state->name, config, "input");
  state->outputs = Tensors(state->name, config, "output");
  if (state->outputs.empty()) {
    throw Failure(TRITONSERVER_ERROR_INVALID_ARG, state->name + ": config.pbtxt declares no output");
  }
  std::string intra = Parameter(config, "intra_op_thread_count");
  std::string inter = Parameter(config, "inter_op_thread_count");
  state->intra_op_threads = intra.empty() ? std::max(1, UsableCpus() / CpuInstances(config))
                                          : PositiveInt(state->name, "intra_op_thread_count", intra);
  state->inter_op_threads = inter.empty() ? 1 : PositiveInt(state->name, "inter_op_thread_count", inter);
  state->spinning = Parameter(config, "allow_spinning") == "1";
  state->mem_pattern = Flag(state->name, config, "enable_mem_pattern", true);
  state->mem_arena = Flag(state->name, config, "enable_mem_arena", true);
  return state;
}

// ---------------------------------------------------------------------------------------------------------------
// an instance: one onnxruntime session
// ---------------------------------------------------------------------------------------------------------------


// A tensor of the ONNX file: element type, dims (-1 where not fixed) and the names of its symbolic dims.
struct OnnxTensor {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> dims;
  std::vector<std::string> symbols;
};
using OnnxTensors = std::map<std::string, OnnxTensor>;

OnnxTensors SessionTensors(OrtSession* session, bool inputs) {
  OrtAllocator* allocator = nullptr;
  Check(ort.GetAllocatorWithDefaultOptions(&allocator), "onnxruntime allocator");
  size_t count = 0;
  Check(inputs ? ort.SessionGetInputCount(session, &count) : ort.SessionGetOutputCount(session, &count), "count");
  OnnxTensors found;
  for (size_t i = 0; i < count; ++i) {
    char* name = nullptr;
    Check(inputs ? ort.SessionGetInputName(session, i, allocator, &name)
                 : ort.SessionGetOutputName(session, i, allocator, &name),
          "tensor name");
    std::string key(name);
    Check(ort.AllocatorFree(allocator, name), "free");
    OrtTypeInfo* info = nullptr;
    Check(inputs ? ort.SessionGetInputTypeInfo(session, i, &info) : ort.SessionGetOutputTypeInfo(session, i, &info),
          "tensor type");
    const OrtTensorTypeAndShapeInfo* tensor = nullptr;
    OnnxTensor t;
    size_t dims = 0;
    std::vector<const char*> symbols;
    OrtStatus* status = ort.CastTypeInfoToTensorInfo(info, &tensor);
    if (status == nullptr && tensor == nullptr) {  // not a tensor (a sequence or map): no type Triton can carry
      found[key] = t;
      ort.ReleaseTypeInfo(info);
      continue;
    }
    if (status == nullptr) status = ort.GetTensorElementType(tensor, &t.type);
    if (status == nullptr) status = ort.GetDimensionsCount(tensor, &dims);
    if (status == nullptr) {
      t.dims.resize(dims);
      symbols.resize(dims, nullptr);
      status = ort.GetDimensions(tensor, t.dims.data(), dims);
    }
    if (status == nullptr) status = ort.GetSymbolicDimensions(tensor, symbols.data(), dims);
    for (const char* sym : symbols) t.symbols.emplace_back(sym != nullptr ? sym : "");
    ort.ReleaseTypeInfo(info);
    Check(status, "tensor type");
    found[key] = t;
  }
  return found;
}

std::string Names(const OnnxTensors& found) {
  std::string s;
  for (const auto& entry : found) s += (s.empty() ? "" : ", ") + entry.first;
  return "[" + s + "]";
}

// Each tensor the config names must be a tensor of the ONNX file with the same element type.
void Match(const ModelState& model, const std::vector<TensorSpec>& specs, const OnnxTensors& found,
           const char* kind) {
  for (const TensorSpec& spec : specs) {
    auto it = found.find(spec.name);
    if (it == found.end()) {
      throw Failure(TRITONSERVER_ERROR_INVALID_ARG, model.name + ": config " + kind + " '" + spec.name +
                                                        "' is not an " + kind + " of " + model.onnx_file + ": " +
                                                        Names(found));
    }
    if (it->second.type != spec.type->onnx) {
      throw Failure(TRITONSERVER_ERROR_INVALID_ARG, model.name + ": config " + kind + " '" + spec.name + "' is " +
                                                        spec.type->config + " but " + model.onnx_file + " has " +
                                                        OnnxName(it->second.type));
    }
  }
}

// Where each dim of an output comes from, when the ONNX file says: a fixed size, or the size of an input's dim
// with the same symbolic name ("n", "rows"...). Known before the run, the outputs can be made in the responses
// and onnxruntime writes into them, saving a copy of every output. Empty: the output's shape is only known after.
struct DimSource {
  int64_t fixed = -1;
  size_t input = 0;
  size_t dim = 0;
};

std::vector<DimSource> ShapeRecipe(const OnnxTensor& output, const std::vector<TensorSpec>& inputs,
                                   const OnnxTensors& onnx_inputs) {
  std::vector<DimSource> recipe;
  for (size_t d = 0; d < output.dims.size(); ++d) {
    DimSource source;
    if (output.dims[d] >= 0) {
      source.fixed = output.dims[d];
    } else {
      bool found = false;
      for (size_t i = 0; i < inputs.size() && !found && !output.symbols[d].empty(); ++i) {
        const OnnxTensor& in = onnx_inputs.at(inputs[i].name);
        for (size_t j = 0; j < in.symbols.size() && !found; ++j) {
          if (in.dims[j] < 0 && in.symbols[j] == output.symbols[d]) {
            source.input = i;
            source.dim = j;
            found = true;
          }
        }
      }
      if (!found) return {};
    }
    recipe.push_back(source);
  }
  if (recipe.empty()) return {};  // a scalar output: nothing worth saving
  return recipe;
}

struct ValueDeleter {
  void operator()(OrtValue* v) const { ort.ReleaseValue(v); }
};
using Value = std::unique_ptr<OrtValue, ValueDeleter>;

struct InstanceState {
  ModelState* model = nullptr;
  TRITONBACKEND_ModelInstance* instance = nullptr;
  OrtSession* session = nullptr;
  OrtMemoryInfo* cpu = nullptr;
  std::vector<const char*> input_names;
  std::vector<const char*> output_names;
  std::vector<std::vector<DimSource>> output_shapes;  // per config output; empty: known only after the run
  bool outputs_in_place = false;  // every output's shape can be worked out before the run...
  bool outputs_verified = false;  // ...and a run has shown the ONNX file's shapes to hold

  ~InstanceState() {
    if (session != nullptr) ort.ReleaseSession(session);
    if (cpu != nullptr) ort.ReleaseMemoryInfo(cpu);
  }
};

std::unique_ptr<InstanceState> OpenSession(ModelState* model, TRITONBACKEND_ModelInstance* instance) {
  auto state = std::make_unique<InstanceState>();
  state->model = model;
  state->instance = instance;
  OrtSessionOptions* options = nullptr;
  Check(ort.CreateSessionOptions(&options), model->name + ": session options");
  std::unique_ptr<OrtSessionOptions, void (*)(OrtSessionOptions*)> owned(options, ort.ReleaseSessionOptions);
  const char* spin = model->spinning ? "1" : "0";
  Check(ort.SetIntraOpNumThreads(options, model->intra_op_threads), model->name + ": intra-op threads");
  Check(ort.SetInterOpNumThreads(options, model->inter_op_threads), model->name + ": inter-op threads");
  Check(ort.AddSessionConfigEntry(options, "session.intra_op.allow_spinning", spin), model->name + ": spinning");
  Check(ort.AddSessionConfigEntry(options, "session.inter_op.allow_spinning", spin), model->name + ": spinning");
  Check(model->mem_pattern ? ort.EnableMemPattern(options) : ort.DisableMemPattern(options),
        model->name + ": memory pattern");
  Check(model->mem_arena ? ort.EnableCpuMemArena(options) : ort.DisableCpuMemArena(options), model->name + ": arena");
  Check(ort.SetSessionGraphOptimizationLevel(options, ORT_ENABLE_ALL), model->name + ": graph optimisation");
  Check(ort.CreateSession(ort_env, model->onnx_path.c_str(), options, &state->session),
        model->name + ": onnxruntime could not load " + model->onnx_path);
  Check(ort.CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &state->cpu), model->name + ": memory info");

  OnnxTensors onnx_inputs = SessionTensors(state->session, true);
  OnnxTensors onnx_outputs = SessionTensors(state->session, false);
  Match(*model, model->inputs, onnx_inputs, "input");
  Match(*model, model->outputs, onnx_outputs, "output");
  for (const TensorSpec& t : model->inputs) state->input_names.push_back(t.name.c_str());
  state->outputs_in_place = true;
  for (const TensorSpec& t : model->outputs) {
    state->output_names.push_back(t.name.c_str());
    state->output_shapes.push_back(ShapeRecipe(onnx_outputs.at(t.name), model->inputs, onnx_inputs));
    state->outputs_in_place = state->outputs_in_place && !state->output_shapes.back().empty();
  }
  return state;
}

// ---------------------------------------------------------------------------------------------------------------
// one request: its inputs, where its answer goes
// ---------------------------------------------------------------------------------------------------------------

const char kEmpty[1] = {0};  // where an empty tensor's data "is": onnxruntime wants a pointer even for no bytes

struct InputTensor {
  std::vector<int64_t> shape;
  const char* data = nullptr;  // Triton's buffer when it came in one piece, else gathered.data()
  uint64_t bytes = 0;
  std::vector<char> gathered;
};

struct Pending {
  TRITONBACKEND_Request* request = nullptr;
  TRITONBACKEND_Response* response = nullptr;
  std::vector<InputTensor> inputs;  // in the config's order
  int64_t rows = 1;                 // batch size of this request (1 for a model without batching)
  std::vector<size_t> wanted;       // indices into the config's outputs
  TRITONSERVER_Error* error = nullptr;
  bool ok() const { return error == nullptr && response != nullptr; }
};

void Fail(Pending& p, TRITONSERVER_Error_Code code, const std::string& msg) {
  if (p.error == nullptr) p.error = TRITONSERVER_ErrorNew(code, msg.c_str());
}

void ReadInputs(const ModelState& model, Pending& p) {
  for (const TensorSpec& spec : model.inputs) {
    TRITONBACKEND_Input* input = nullptr;
    if (TRITONSERVER_Error* e = TRITONBACKEND_RequestInput(p.request, spec.name.c_str(), &input)) {
      TRITONSERVER_ErrorDelete(e);
      throw Failure(TRITONSERVER_ERROR_INVALID_ARG, model.name + ": the request has no input '" + spec.name + "'");
    }
    TRITONSERVER_DataType type;
    const int64_t* shape = nullptr;
    uint32_t dims = 0, buffers = 0;
    uint64_t bytes = 0;
    Check(TRITONBACKEND_InputProperties(input, nullptr, &type, &shape, &dims, &bytes, &buffers), "input properties");
    if (type != spec.type->triton_type) {
      throw Failure(TRITONSERVER_ERROR_INVALID_ARG, model.name + ": input '" + spec.name + "' is " +
                                                        TritonName(type) + ", the model takes " + spec.type->triton);
    }
    InputTensor t;
    t.shape.assign(shape, shape + dims);
    for (int64_t d : t.shape) {
      if (d < 0) throw Failure(TRITONSERVER_ERROR_INVALID_ARG, model.name + ": input '" + spec.name + "' has shape " +
                                                                     ShapeText(shape, dims));
    }
    const uint64_t needed = ByteSize(t.shape, *spec.type);
    if (needed != bytes) {
      throw Failure(TRITONSERVER_ERROR_INVALID_ARG,
                    model.name + ": input '" + spec.name + "' has " + std::to_string(bytes) + " bytes, shape " +
                        ShapeText(shape, dims) + " of " + spec.type->triton + " needs " + std::to_string(needed));
    }
    if (model.max_batch_size > 0) {
      if (dims == 0) {
        throw Failure(TRITONSERVER_ERROR_INVALID_ARG,
                      model.name + ": input '" + spec.name + "' has no batch dimension");
      }
      if (&spec != &model.inputs.front() && shape[0] != p.rows) {
        throw Failure(TRITONSERVER_ERROR_INVALID_ARG, model.name + ": the inputs disagree on the batch size");
      }
      p.rows = shape[0];
    }
    t.bytes = bytes;
    for (uint32_t b = 0; b < buffers; ++b) {
      const void* data = nullptr;
      uint64_t size = 0;
      TRITONSERVER_MemoryType memory = TRITONSERVER_MEMORY_CPU;
      int64_t memory_id = 0;
      Check(TRITONBACKEND_InputBuffer(input, b, &data, &size, &memory, &memory_id), "input buffer");
      if (memory == TRITONSERVER_MEMORY_GPU) {
        throw Failure(TRITONSERVER_ERROR_UNSUPPORTED, model.name + ": input '" + spec.name + "' is in GPU memory");
      }
      if (buffers == 1) {
        t.data = static_cast<const char*>(data);
      } else {
        t.gathered.insert(t.gathered.end(), static_cast<const char*>(data), static_cast<const char*>(data) + size);
      }
    }
    if (buffers != 1) t.data = t.gathered.empty() ? kEmpty : t.gathered.data();
    p.inputs.push_back(std::move(t));
  }
}

void ReadWanted(const ModelState& model, Pending& p) {
  uint32_t count = 0;
  Check(TRITONBACKEND_RequestOutputCount(p.request, &count), "requested outputs");
  for (uint32_t i = 0; i < count; ++i) {
    const char* name = nullptr;
    Check(TRITONBACKEND_RequestOutputName(p.request, i, &name), "requested output");
    for (size_t o = 0; o < model.outputs.size(); ++o) {
      if (model.outputs[o].name == name) p.wanted.push_back(o);
    }
  }
  if (p.wanted.empty()) {
    p.wanted.resize(model.outputs.size());
    std::iota(p.wanted.begin(), p.wanted.end(), 0);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// a run: the requests of one group joined, run once, answers split back
// ---------------------------------------------------------------------------------------------------------------

struct Output {
  Value value;
  std::vector<int64_t> shape;
  const char* data = nullptr;
  uint64_t bytes = 0;
  bool in_place = false;  // onnxruntime wrote it straight into the (single) request's response
};

// An output of `response` with its buffer, in CPU memory.
void* NewOutput(const ModelState& model, TRITONBACKEND_Response* response, const TensorSpec& spec,
                const std::vector<int64_t>& shape, uint64_t bytes) {
  TRITONBACKEND_Output* output = nullptr;
  Check(TRITONBACKEND_ResponseOutput(response, &output, spec.name.c_str(), spec.type->triton_type, shape.data(),
                                     static_cast<uint32_t>(shape.size())),
        model.name + ": output '" + spec.name + "'");
  void* buffer = nullptr;
  TRITONSERVER_MemoryType memory = TRITONSERVER_MEMORY_CPU;
  int64_t memory_id = 0;
  Check(TRITONBACKEND_OutputBuffer(output, &buffer, bytes, &memory, &memory_id),
        model.name + ": output buffer for '" + spec.name + "'");
  if (memory == TRITONSERVER_MEMORY_GPU) {
    throw Failure(TRITONSERVER_ERROR_UNSUPPORTED, model.name + ": Triton offered GPU memory for an output");
  }
  return buffer;
}

// The shape of config output `o` for a request, from its recipe and the request's input shapes.
std::vector<int64_t> PredictedShape(const InstanceState& st, size_t o, const Pending& p) {
  std::vector<int64_t> shape;
  for (const DimSource& d : st.output_shapes[o]) {
    shape.push_back(d.fixed >= 0 ? d.fixed
                                 : (d.dim < p.inputs[d.input].shape.size() ? p.inputs[d.input].shape[d.dim] : -1));
  }
  return shape;
}

// For a batch of one request whose output shapes are known: each wanted output made in the response now and
// handed to onnxruntime to write into (outputs nobody asked for are left to onnxruntime).
std::vector<Value> OutputsInPlace(InstanceState& st, Pending& p) {
  const ModelState& model = *st.model;
  std::vector<std::vector<int64_t>> shapes(model.outputs.size());
  for (size_t o : p.wanted) {  // all worked out before any is added to the response
    shapes[o] = PredictedShape(st, o, p);
    for (int64_t d : shapes[o]) {
      if (d < 0) return {};
    }
  }
  std::vector<Value> placed(model.outputs.size());
  for (size_t o : p.wanted) {
    const TensorSpec& spec = model.outputs[o];
    const uint64_t bytes = ByteSize(shapes[o], *spec.type);
    void* buffer = NewOutput(model, p.response, spec, shapes[o], bytes);
    OrtValue* value = nullptr;
    Check(ort.CreateTensorWithDataAsOrtValue(st.cpu, buffer, bytes, shapes[o].data(), shapes[o].size(),
                                             spec.type->onnx, &value),
          model.name + ": output '" + spec.name + "'");
    placed[o].reset(value);
  }
  return placed;
}

// One onnxruntime run over the group's requests, joined along the batch dim. `placed`: outputs already made in
// the (single) request's response, for onnxruntime to fill; the others it allocates.
std::vector<Output> RunSession(InstanceState& st, std::vector<Pending*>& group, std::vector<Value> placed,
                               uint64_t* compute_start, uint64_t* compute_end) {
  const ModelState& model = *st.model;
  std::vector<Value> inputs;
  std::vector<std::unique_ptr<char[]>> joined(model.inputs.size());  // not zero-filled: written once below
  for (size_t i = 0; i < model.inputs.size(); ++i) {
    const InputTensor& first = group.front()->inputs[i];
    std::vector<int64_t> shape = first.shape;
    char* data = const_cast<char*>(first.data);  // onnxruntime only reads its inputs
    uint64_t bytes = first.bytes;
    if (group.size() > 1) {
      shape[0] = 0;
      bytes = 0;
      for (Pending* p : group) {
        shape[0] += p->inputs[i].shape[0];
        bytes += p->inputs[i].bytes;
      }
      joined[i].reset(new char[bytes]);
      size_t at = 0;
      for (Pending* p : group) {
        std::memcpy(joined[i].get() + at, p->inputs[i].data, p->inputs[i].bytes);
        at += p->inputs[i].bytes;
      }
      data = joined[i].get();
    }
    OrtValue* value = nullptr;
    Check(ort.CreateTensorWithDataAsOrtValue(st.cpu, data, bytes, shape.data(), shape.size(),
                                             model.inputs[i].type->onnx, &value),
          model.name + ": input '" + model.inputs[i].name + "'");
    inputs.emplace_back(value);
  }
  std::vector<const OrtValue*> feeds;
  for (const Value& v : inputs) feeds.push_back(v.get());
  placed.resize(model.outputs.size());
  std::vector<bool> in_place;
  std::vector<OrtValue*> results;
  for (Value& v : placed) {
    in_place.push_back(v != nullptr);
    results.push_back(v.release());
  }

  *compute_start = NowNs();
  OrtStatus* status = ort.Run(st.session, nullptr, st.input_names.data(), feeds.data(), feeds.size(),
                              st.output_names.data(), st.output_names.size(), results.data());
  *compute_end = NowNs();
  std::vector<Output> outputs(results.size());
  for (size_t o = 0; o < results.size(); ++o) {
    outputs[o].value.reset(results[o]);
    outputs[o].in_place = in_place[o];
  }
  Check(status, model.name + ": onnxruntime run");

  int64_t total_rows = 0;
  for (Pending* p : group) total_rows += p->rows;
  for (size_t o = 0; o < outputs.size(); ++o) {
    Output& out = outputs[o];
    OrtTensorTypeAndShapeInfo* info = nullptr;
    Check(ort.GetTensorTypeAndShape(out.value.get(), &info), model.name + ": output shape");
    size_t dims = 0;
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    OrtStatus* s = ort.GetDimensionsCount(info, &dims);
    if (s == nullptr) {
      out.shape.resize(dims);
      s = ort.GetDimensions(info, out.shape.data(), dims);
    }
    if (s == nullptr) s = ort.GetTensorElementType(info, &type);
    ort.ReleaseTensorTypeAndShapeInfo(info);
    Check(s, model.name + ": output shape");
    const TensorSpec& spec = model.outputs[o];
    if (type != spec.type->onnx) {
      throw Failure(TRITONSERVER_ERROR_INTERNAL, model.name + ": output '" + spec.name + "' came back as " +
                                                     OnnxName(type) + ", the config says " + spec.type->config);
    }
    out.bytes = ByteSize(out.shape, *spec.type);
    void* data = nullptr;
    Check(ort.GetTensorMutableData(out.value.get(), &data), model.name + ": output data");
    out.data = static_cast<const char*>(data);
    if (group.size() > 1 && (out.shape.empty() || out.shape[0] != total_rows)) {
      throw Failure(TRITONSERVER_ERROR_INTERNAL, model.name + ": output '" + spec.name + "' has shape " +
                                                     ShapeText(out.shape.data(), out.shape.size()) +
                                                     ", not batch-major with " + std::to_string(total_rows) + " rows");
    }
  }
  return outputs;
}

// The outputs each request asked for, added to its response (those onnxruntime wrote in place are there already).
void Answer(const ModelState& model, const std::vector<Output>& outputs, std::vector<Pending*>& group) {
  int64_t row = 0;
  for (Pending* p : group) {
    for (size_t o : p->wanted) {
      const Output& out = outputs[o];
      if (out.in_place) continue;
      std::vector<int64_t> shape = out.shape;
      const char* data = out.data;
      uint64_t bytes = out.bytes;
      if (group.size() > 1) {
        const uint64_t row_bytes = out.shape[0] > 0 ? out.bytes / static_cast<uint64_t>(out.shape[0]) : 0;
        shape[0] = p->rows;
        data += row_bytes * static_cast<uint64_t>(row);
        bytes = row_bytes * static_cast<uint64_t>(p->rows);
      }
      void* buffer = NewOutput(model, p->response, model.outputs[o], shape, bytes);
      if (bytes > 0) std::memcpy(buffer, data, bytes);
    }
    row += p->rows;
  }
}

struct Timing {
  uint64_t compute_start = 0;
  uint64_t compute_end = 0;
};

// Whether the outputs of a run of one request had the shapes worked out before it: the ONNX file's declared
// shapes hold, and from now on the outputs can be made before the run.
bool ShapesHeld(const InstanceState& st, const std::vector<Output>& outputs, const Pending& p) {
  for (size_t o = 0; o < outputs.size(); ++o) {
    if (outputs[o].shape != PredictedShape(st, o, p)) return false;
  }
  return true;
}

void RunGroup(InstanceState& st, std::vector<Pending*>& group, Timing& timing);

// RunGroup with any other exception (out of memory...) failing the group's requests instead of Triton.
void RunGroupSafely(InstanceState& st, std::vector<Pending*>& group, Timing& timing) {
  try {
    RunGroup(st, group, timing);
  } catch (const std::exception& e) {
    for (Pending* p : group) Fail(*p, TRITONSERVER_ERROR_INTERNAL, st.model->name + ": " + e.what());
  }
}

void RunGroup(InstanceState& st, std::vector<Pending*>& group, Timing& timing) {
  const bool single = group.size() == 1;
  const bool in_place = single && st.outputs_in_place && st.outputs_verified;
  try {
    uint64_t start = 0, end = 0;
    std::vector<Value> placed;
    if (in_place) placed = OutputsInPlace(st, *group.front());
    std::vector<Output> outputs = RunSession(st, group, std::move(placed), &start, &end);
    if (timing.compute_start == 0) timing.compute_start = start;
    timing.compute_end = end;
    if (single && st.outputs_in_place && !st.outputs_verified) {
      st.outputs_verified = ShapesHeld(st, outputs, *group.front());
      if (!st.outputs_verified) {
        st.outputs_in_place = false;
        Log(TRITONSERVER_LOG_INFO, st.model->name + ": outputs differ from the shapes " + st.model->onnx_file +
                                       " declares; they are copied into the responses after each run");
      }
    }
    Answer(*st.model, outputs, group);
  } catch (const Failure& f) {
    if (in_place) {
      // Most likely the declared shapes held before but not for this request. The response already carries the
      // outputs made for it, so it cannot be answered again: it fails with onnxruntime's reason, and this instance
      // makes outputs after the run from now on (whatever the cause was, that way is always right).
      st.outputs_in_place = false;
      Log(TRITONSERVER_LOG_WARN, st.model->name + ": a run into outputs made before it failed (" + f.what() +
                                     "); outputs are copied into the responses after each run from now on");
      Fail(*group.front(), f.code, f.what());
      return;
    }
    if (group.size() > 1) {  // e.g. a model with a fixed batch dimension: one run per request
      for (Pending* p : group) {
        std::vector<Pending*> alone{p};
        RunGroup(st, alone, timing);
      }
      return;
    }
    Fail(*group.front(), f.code, f.what());
  }
}

// Requests that can be joined: the same non-batch dims on every input (a model without batching: none).
std::vector<std::vector<Pending*>> Groups(const ModelState& model, std::vector<Pending>& pending) {
  std::vector<std::vector<Pending*>> groups;
  std::map<std::vector<int64_t>, size_t> index;
  for (Pending& p : pending) {
    if (!p.ok()) continue;
    if (model.max_batch_size <= 0) {
      groups.push_back({&p});
      continue;
    }
    std::vector<int64_t> key;
    for (const InputTensor& t : p.inputs) {
      key.push_back(static_cast<int64_t>(t.shape.size()));
      key.insert(key.end(), t.shape.begin() + 1, t.shape.end());
    }
    auto [it, added] = index.emplace(key, groups.size());
    if (added) groups.emplace_back();
    groups[it->second].push_back(&p);
  }
  return groups;
}

template <typename T>
void* StateOf(TRITONSERVER_Error* (*get)(T*, void**), T* owner) {
  void* state = nullptr;
  Check(get(owner, &state), "backend state");
  return state;
}

}  // namespace

// -----------------------------------------------------------------------------------------------------------------
// the TRITONBACKEND entry points
// -----------------------------------------------------------------------------------------------------------------

EXPORT TRITONSERVER_Error* TRITONBACKEND_Initialize(TRITONBACKEND_Backend*) {
  return Guard([] {
    uint32_t major = 0, minor = 0;
    Check(TRITONBACKEND_ApiVersion(&major, &minor), "Triton backend API version");
    if (major != TRITONBACKEND_API_VERSION_MAJOR) {
      throw Failure(TRITONSERVER_ERROR_UNSUPPORTED, "onnxruntime backend: Triton's backend API is " +
                                                        std::to_string(major) + "." + std::to_string(minor) +
                                                        ", this backend speaks 1.x");
    }
    if (const char* problem = ort.Load(kOrtApiVersion)) {
      throw Failure(TRITONSERVER_ERROR_INTERNAL, std::string("onnxruntime backend: ") + problem);
    }
    Check(ort.CreateEnv(ORT_LOGGING_LEVEL_WARNING, "imaging-cds-onnxruntime", &ort_env), "onnxruntime environment");
    Log(TRITONSERVER_LOG_INFO, std::string("onnxruntime backend: native, CPU, onnxruntime ") +
                                   OrtGetApiBase()->GetVersionString());
  });
}

EXPORT TRITONSERVER_Error* TRITONBACKEND_Finalize(TRITONBACKEND_Backend*) {
  if (ort_env != nullptr) ort.ReleaseEnv(ort_env);
  ort_env = nullptr;
  return nullptr;
}

EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInitialize(TRITONBACKEND_Model* model) {
  return Guard([model] {
    std::unique_ptr<ModelState> state = ReadModel(model);
    Log(TRITONSERVER_LOG_INFO, state->name + ": " + state->onnx_path + ", " +
                                   std::to_string(state->intra_op_threads) + " intra-op thread(s) per instance, " +
                                   "spinning " + (state->spinning ? "on" : "off") + ", memory pattern " +
                                   (state->mem_pattern ? "on" : "off") + ", arena " + (state->mem_arena ? "on" : "off"));
    Check(TRITONBACKEND_ModelSetState(model, state.get()), "model state");
    state.release();
  });
}

EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelFinalize(TRITONBACKEND_Model* model) {
  return Guard([model] { delete static_cast<ModelState*>(StateOf(TRITONBACKEND_ModelState, model)); });
}

EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceInitialize(TRITONBACKEND_ModelInstance* instance) {
  return Guard([instance] {
    TRITONBACKEND_Model* model = nullptr;
    Check(TRITONBACKEND_ModelInstanceModel(instance, &model), "instance model");
    auto* model_state = static_cast<ModelState*>(StateOf(TRITONBACKEND_ModelState, model));
    std::unique_ptr<InstanceState> state = OpenSession(model_state, instance);
    Check(TRITONBACKEND_ModelInstanceSetState(instance, state.get()), "instance state");
    state.release();
  });
}

EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceFinalize(TRITONBACKEND_ModelInstance* instance) {
  return Guard([instance] {
    delete static_cast<InstanceState*>(StateOf(TRITONBACKEND_ModelInstanceState, instance));
  });
}

// Every request gets exactly one final response (its outputs or its error) and is released; the function itself
// fails only when it could not even find its state, and then Triton answers the requests.
EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceExecute(TRITONBACKEND_ModelInstance* instance,
                                                              TRITONBACKEND_Request** requests,
                                                              const uint32_t request_count) {
  InstanceState* st = nullptr;
  if (TRITONSERVER_Error* e = Guard([&] {
        st = static_cast<InstanceState*>(StateOf(TRITONBACKEND_ModelInstanceState, instance));
      })) {
    return e;
  }
  const ModelState& model = *st->model;
  const uint64_t exec_start = NowNs();
  std::vector<Pending> pending(request_count);
  for (uint32_t r = 0; r < request_count; ++r) {
    Pending& p = pending[r];
    p.request = requests[r];
    if (TRITONSERVER_Error* e = TRITONBACKEND_ResponseNew(&p.response, p.request)) {
      Log(TRITONSERVER_LOG_ERROR, model.name + ": could not make a response: " + TRITONSERVER_ErrorMessage(e));
      TRITONSERVER_ErrorDelete(e);
      p.response = nullptr;
      continue;
    }
    try {
      ReadInputs(model, p);
      ReadWanted(model, p);
    } catch (const Failure& f) {
      Fail(p, f.code, f.what());
    } catch (const std::exception& e) {
      Fail(p, TRITONSERVER_ERROR_INTERNAL, model.name + ": " + e.what());
    }
  }

  Timing timing;
  uint64_t rows = 0;
  for (std::vector<Pending*>& group : Groups(model, pending)) {
    RunGroupSafely(*st, group, timing);
    for (Pending* p : group) rows += static_cast<uint64_t>(p->rows);
  }
  if (timing.compute_start == 0) timing.compute_start = timing.compute_end = NowNs();
  const uint64_t exec_end = NowNs();

  for (Pending& p : pending) {
    const bool success = p.ok();
    if (p.response != nullptr) {
      if (TRITONSERVER_Error* e = TRITONBACKEND_ResponseSend(p.response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, p.error)) {
        Log(TRITONSERVER_LOG_ERROR, model.name + ": could not send a response: " + TRITONSERVER_ErrorMessage(e));
        TRITONSERVER_ErrorDelete(e);
      }
    }
    if (p.error != nullptr) TRITONSERVER_ErrorDelete(p.error);
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelInstanceReportStatistics(
            instance, p.request, success, exec_start, timing.compute_start, timing.compute_end, exec_end)) {
      TRITONSERVER_ErrorDelete(e);
    }
    if (TRITONSERVER_Error* e = TRITONBACKEND_RequestRelease(p.request, TRITONSERVER_REQUEST_RELEASE_ALL)) {
      Log(TRITONSERVER_LOG_ERROR, model.name + ": could not release a request: " + TRITONSERVER_ErrorMessage(e));
      TRITONSERVER_ErrorDelete(e);
    }
  }
  if (rows > 0) {
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelInstanceReportBatchStatistics(
            instance, rows, exec_start, timing.compute_start, timing.compute_end, exec_end)) {
      TRITONSERVER_ErrorDelete(e);
    }
  }
  return nullptr;
}
