// The part of ONNX Runtime's C API that imaging-cds's onnxruntime backend calls.
//
// libonnxruntime.so (shipped inside PyPI's onnxruntime wheel, the same build the worker's LocalOnnxBackend runs)
// exports one function, OrtGetApiBase(); everything else is reached through the OrtApi table it returns: a struct
// of function pointers whose order ONNX Runtime never changes (new functions are only appended). The wheel ships
// no headers, so the entries used here are declared by their position in that table (ONNX Runtime's documented C
// API, onnxruntime_c_api.h) with their C signatures. OrtApiTable checks the table it is given at start-up (a status
// made and read back through four entries) so that a wrong position fails loudly at model load, not silently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

extern "C" {

struct OrtStatus;
struct OrtEnv;
struct OrtSession;
struct OrtSessionOptions;
struct OrtRunOptions;
struct OrtValue;
struct OrtMemoryInfo;
struct OrtAllocator;
struct OrtTypeInfo;
struct OrtTensorTypeAndShapeInfo;

typedef enum {
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_COMPLEX64,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_COMPLEX128,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16,
} ONNXTensorElementDataType;

typedef enum { ORT_LOGGING_LEVEL_VERBOSE, ORT_LOGGING_LEVEL_INFO, ORT_LOGGING_LEVEL_WARNING, ORT_LOGGING_LEVEL_ERROR,
               ORT_LOGGING_LEVEL_FATAL } OrtLoggingLevel;
typedef enum { ORT_DISABLE_ALL = 0, ORT_ENABLE_BASIC = 1, ORT_ENABLE_EXTENDED = 2, ORT_ENABLE_ALL = 99 }
    GraphOptimizationLevel;
typedef enum { OrtInvalidAllocator = -1, OrtDeviceAllocator = 0, OrtArenaAllocator = 1 } OrtAllocatorType;
typedef enum { OrtMemTypeCPUInput = -2, OrtMemTypeCPUOutput = -1, OrtMemTypeDefault = 0 } OrtMemType;
typedef enum { ORT_OK, ORT_FAIL, ORT_INVALID_ARGUMENT } OrtErrorCode;  // the first three codes (enough for the check)

struct OrtApiBase {
  const void* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)();
};
const OrtApiBase* OrtGetApiBase();

}  // extern "C"

// The entries used, each as (position in OrtApi, C signature).
struct OrtApiTable {
  OrtStatus* (*CreateStatus)(OrtErrorCode code, const char* msg);                                               // 0
  OrtErrorCode (*GetErrorCode)(const OrtStatus* status);                                                         // 1
  const char* (*GetErrorMessage)(const OrtStatus* status);                                                       // 2
  OrtStatus* (*CreateEnv)(OrtLoggingLevel level, const char* logid, OrtEnv** out);                              // 3
  OrtStatus* (*CreateSession)(const OrtEnv* env, const char* model_path, const OrtSessionOptions* options,
                              OrtSession** out);                                                                 // 7
  OrtStatus* (*Run)(OrtSession* session, const OrtRunOptions* run_options, const char* const* input_names,
                    const OrtValue* const* inputs, size_t input_len, const char* const* output_names,
                    size_t output_names_len, OrtValue** outputs);                                                // 9
  OrtStatus* (*CreateSessionOptions)(OrtSessionOptions** options);                                               // 10
  OrtStatus* (*EnableMemPattern)(OrtSessionOptions* options);                                                     // 16
  OrtStatus* (*DisableMemPattern)(OrtSessionOptions* options);                                                    // 17
  OrtStatus* (*EnableCpuMemArena)(OrtSessionOptions* options);                                                    // 18
  OrtStatus* (*DisableCpuMemArena)(OrtSessionOptions* options);                                                   // 19
  OrtStatus* (*SetSessionGraphOptimizationLevel)(OrtSessionOptions* options, GraphOptimizationLevel level);     // 23
  OrtStatus* (*SetIntraOpNumThreads)(OrtSessionOptions* options, int threads);                                   // 24
  OrtStatus* (*SetInterOpNumThreads)(OrtSessionOptions* options, int threads);                                   // 25
  OrtStatus* (*SessionGetInputCount)(const OrtSession* session, size_t* out);                                    // 30
  OrtStatus* (*SessionGetOutputCount)(const OrtSession* session, size_t* out);                                   // 31
  OrtStatus* (*SessionGetInputTypeInfo)(const OrtSession* session, size_t index, OrtTypeInfo** out);           // 33
  OrtStatus* (*SessionGetOutputTypeInfo)(const OrtSession* session, size_t index, OrtTypeInfo** out);          // 34
  OrtStatus* (*SessionGetInputName)(const OrtSession* session, size_t index, OrtAllocator* allocator,
                                    char** out);                                                                 // 36
  OrtStatus* (*SessionGetOutputName)(const OrtSession* session, size_t index, OrtAllocator* allocator,
                                     char** out);                                                                // 37
  OrtStatus* (*CreateTensorWithDataAsOrtValue)(const OrtMemoryInfo* info, void* data, size_t data_len,
                                               const int64_t* shape, size_t shape_len,
                                               ONNXTensorElementDataType type, OrtValue** out);                 // 49
  OrtStatus* (*GetTensorMutableData)(OrtValue* value, void** out);                                              // 51
  OrtStatus* (*CastTypeInfoToTensorInfo)(const OrtTypeInfo* type_info, const OrtTensorTypeAndShapeInfo** out);  // 55
  OrtStatus* (*GetTensorElementType)(const OrtTensorTypeAndShapeInfo* info, ONNXTensorElementDataType* out);    // 60
  OrtStatus* (*GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out);                         // 61
  OrtStatus* (*GetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t dims_length);       // 62
  OrtStatus* (*GetSymbolicDimensions)(const OrtTensorTypeAndShapeInfo* info, const char* dim_params[],
                                      size_t dim_params_length);                                                 // 63
  OrtStatus* (*GetTensorTypeAndShape)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out);                 // 65
  OrtStatus* (*CreateCpuMemoryInfo)(OrtAllocatorType type, OrtMemType mem_type, OrtMemoryInfo** out);          // 69
  OrtStatus* (*AllocatorFree)(OrtAllocator* allocator, void* p);                                                // 76
  OrtStatus* (*GetAllocatorWithDefaultOptions)(OrtAllocator** out);                                             // 78
  void (*ReleaseEnv)(OrtEnv* env);                                                                              // 92
  void (*ReleaseStatus)(OrtStatus* status);                                                                     // 93
  void (*ReleaseMemoryInfo)(OrtMemoryInfo* info);                                                               // 94
  void (*ReleaseSession)(OrtSession* session);                                                                  // 95
  void (*ReleaseValue)(OrtValue* value);                                                                        // 96
  void (*ReleaseTypeInfo)(OrtTypeInfo* info);                                                                   // 98
  void (*ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* info);                                       // 99
  void (*ReleaseSessionOptions)(OrtSessionOptions* options);                                                    // 100
  OrtStatus* (*AddSessionConfigEntry)(OrtSessionOptions* options, const char* key, const char* value);         // 130

  // Fills the entries from the OrtApi of the loaded library; returns an error message, or nullptr when the table
  // answered the start-up check.
  const char* Load(uint32_t api_version) {
    const void* api = OrtGetApiBase()->GetApi(api_version);
    if (api == nullptr) return "this libonnxruntime does not offer the requested C API version";
    auto slots = static_cast<void* const*>(api);
    auto at = [slots](auto& entry, size_t position) { entry = reinterpret_cast<decltype(+entry)>(slots[position]); };
    at(CreateStatus, 0);
    at(GetErrorCode, 1);
    at(GetErrorMessage, 2);
    at(CreateEnv, 3);
    at(CreateSession, 7);
    at(Run, 9);
    at(CreateSessionOptions, 10);
    at(EnableMemPattern, 16);
    at(DisableMemPattern, 17);
    at(EnableCpuMemArena, 18);
    at(DisableCpuMemArena, 19);
    at(SetSessionGraphOptimizationLevel, 23);
    at(SetIntraOpNumThreads, 24);
    at(SetInterOpNumThreads, 25);
    at(SessionGetInputCount, 30);
    at(SessionGetOutputCount, 31);
    at(SessionGetInputTypeInfo, 33);
    at(SessionGetOutputTypeInfo, 34);
    at(SessionGetInputName, 36);
    at(SessionGetOutputName, 37);
    at(CreateTensorWithDataAsOrtValue, 49);
    at(GetTensorMutableData, 51);
    at(CastTypeInfoToTensorInfo, 55);
    at(GetTensorElementType, 60);
    at(GetDimensionsCount, 61);
    at(GetDimensions, 62);
    at(GetSymbolicDimensions, 63);
    at(GetTensorTypeAndShape, 65);
    at(CreateCpuMemoryInfo, 69);
    at(AllocatorFree, 76);
    at(GetAllocatorWithDefaultOptions, 78);
    at(ReleaseEnv, 92);
    at(ReleaseStatus, 93);
    at(ReleaseMemoryInfo, 94);
    at(ReleaseSession, 95);
    at(ReleaseValue, 96);
    at(ReleaseTypeInfo, 98);
    at(ReleaseTensorTypeAndShapeInfo, 99);
    at(ReleaseSessionOptions, 100);
    at(AddSessionConfigEntry, 130);

    OrtStatus* probe = CreateStatus(ORT_INVALID_ARGUMENT, "imaging-cds probe");
    const bool ok = probe != nullptr && GetErrorCode(probe) == ORT_INVALID_ARGUMENT &&
                    GetErrorMessage(probe) != nullptr && std::string_view(GetErrorMessage(probe)) == "imaging-cds probe";
    if (probe != nullptr) ReleaseStatus(probe);
    return ok ? nullptr : "the OrtApi table did not answer the start-up check (entries out of place?)";
  }
};
