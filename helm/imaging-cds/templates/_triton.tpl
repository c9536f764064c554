{{/* Triton's pod parts, shared by its own Deployment (triton.placement=deployment) and the worker's pod
(triton.placement=sidecar). Each takes (dict "root" $ "uid" <uid>): the uid (and gid) Triton runs as. In the
worker's pod Triton gets its own /tmp (triton-tmp), its gRPC port listens on 127.0.0.1 only, and its ports are named
triton-* so that they stay apart from the worker's own metrics port. */}}

{{/* "true" when Triton runs in the worker's pod, else empty. */}}
{{- define "imaging-cds.tritonSidecar" -}}
{{- if and .Values.triton.enabled (eq .Values.triton.placement "sidecar") }}true{{ end }}
{{- end }}

{{/* The init container that copies the model repository (source image), or nothing. */}}
{{- define "imaging-cds.tritonInitContainers" -}}
{{- $root := .root -}}
{{- if eq $root.Values.triton.modelRepository.source "image" -}}
# The model repository that ships in the imaging-cds image (triton_repo/), so Triton serves exactly the
# models whose manifests the workers read.
- name: copy-model-repository
  image: {{ include "imaging-cds.appImage" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command: ["cp", "-R", "/app/triton_repo/.", "/models/"]
  resources:
    requests: {cpu: 50m, memory: 32Mi}
    limits: {cpu: 500m, memory: 128Mi}
  securityContext:
    {{- include "imaging-cds.containerSecurityContext" (dict "uid" .uid "gid" .uid) | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: /models
{{- end }}
{{- end }}

{{/* The Triton container. */}}
{{- define "imaging-cds.tritonContainer" -}}
{{- $root := .root -}}
{{- $t := $root.Values.triton -}}
{{- $mr := $t.modelRepository -}}
{{- $sidecar := eq (include "imaging-cds.tritonSidecar" $root) "true" -}}
{{- $p := ternary "triton-" "" $sidecar -}}
- name: triton
  image: {{ include "imaging-cds.imageRef" (dict "image" $t.image "defaultTag" "") }}
  imagePullPolicy: {{ $t.image.pullPolicy }}
  command: ["tritonserver"]
  args:
    {{- if eq $mr.source "objectStorage" }}
    - --model-repository={{ required "triton.modelRepository.objectStorage.url is required for the objectStorage source" $mr.objectStorage.url }}
    {{- else }}
    - --model-repository=/models
    {{- end }}
    - --model-control-mode={{ $t.modelControlMode }}
    - --http-port={{ $t.httpPort }}
    - --grpc-port={{ $t.grpcPort }}
    {{- if $sidecar }}
    # Only the worker beside it calls the gRPC API (inference, shared-memory registration): loopback only.
    - --grpc-address=127.0.0.1
    {{- end }}
    - --metrics-port={{ $t.metricsPort }}
    - --exit-timeout-secs={{ $t.exitTimeoutSeconds }}
    {{- range $t.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  ports:
    - name: {{ $p }}http
      containerPort: {{ $t.httpPort }}
      protocol: TCP
    {{- if not $sidecar }}
    - name: grpc
      containerPort: {{ $t.grpcPort }}
      protocol: TCP
    {{- end }}
    - name: {{ $p }}metrics
      containerPort: {{ $t.metricsPort }}
      protocol: TCP
  env:
    - name: HOME
      value: /tmp
  {{- if and (eq $mr.source "objectStorage") $mr.objectStorage.credentialsSecret }}
  envFrom:
    - secretRef:
        name: {{ $mr.objectStorage.credentialsSecret }}
  {{- end }}
  # Loading models (or fetching them from object storage) may take minutes.
  startupProbe:
    httpGet: {path: /v2/health/ready, port: {{ $p }}http}
    periodSeconds: 5
    failureThreshold: 120
  livenessProbe:
    httpGet: {path: /v2/health/live, port: {{ $p }}http}
    periodSeconds: 10
    timeoutSeconds: 3
    failureThreshold: 3
  readinessProbe:
    httpGet: {path: /v2/health/ready, port: {{ $p }}http}
    periodSeconds: 5
    timeoutSeconds: 3
    failureThreshold: 2
  {{- if $sidecar }}
  # The pod's containers get SIGTERM together, but a stopping worker finishes the job in hand first and needs
  # Triton for it: Triton's SIGTERM waits (within the pod's terminationGracePeriodSeconds) until the worker has
  # unlinked its shared-memory regions, which it does as it exits. A worker that has not sent a request yet has
  # none (its job, if any, is retried); one that crashed leaves them, and the wait is the whole grace period.
  lifecycle:
    preStop:
      exec:
        command: ["/bin/sh", "-c", "while ls /dev/shm/imaging-cds-* >/dev/null 2>&1; do sleep 1; done"]
  {{- end }}
  resources:
    requests:
      {{- toYaml $t.resources.requests | nindent 6 }}
      {{- if gt (int $t.gpu.count) 0 }}
      {{ $t.gpu.resourceName }}: {{ $t.gpu.count }}
      {{- end }}
    limits:
      {{- toYaml $t.resources.limits | nindent 6 }}
      {{- if gt (int $t.gpu.count) 0 }}
      {{ $t.gpu.resourceName }}: {{ $t.gpu.count }}
      {{- end }}
  securityContext:
    {{- include "imaging-cds.containerSecurityContext" (dict "uid" .uid "gid" .uid) | nindent 4 }}
  volumeMounts:
    - name: {{ ternary "triton-tmp" "tmp" $sidecar }}
      mountPath: /tmp
    - name: shm
      mountPath: /dev/shm
    {{- if ne $mr.source "objectStorage" }}
    - name: models
      mountPath: /models
      {{- if eq $mr.source "pvc" }}
      readOnly: true
      {{- with $mr.pvc.subPath }}
      subPath: {{ . }}
      {{- end }}
      {{- end }}
    {{- end }}
{{- end }}

{{/* Triton's volumes: its /tmp, /dev/shm in memory (in the worker's pod the worker mounts the same one), and the
model repository (unless the worker's pod already has the shared claim as "models": the same claim, read-only). */}}
{{- define "imaging-cds.tritonVolumes" -}}
{{- $root := .root -}}
{{- $t := $root.Values.triton -}}
{{- $mr := $t.modelRepository -}}
{{- $sidecar := eq (include "imaging-cds.tritonSidecar" $root) "true" -}}
- name: {{ ternary "triton-tmp" "tmp" $sidecar }}
  emptyDir:
    sizeLimit: 2Gi
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ $t.shmSizeLimit }}
{{- if eq $mr.source "image" }}
- name: models
  emptyDir:
    sizeLimit: 1Gi
{{- else if and (eq $mr.source "pvc") (not (and $sidecar (eq (include "imaging-cds.modelRepositoryPath" $root) "/models"))) }}
- name: models
  persistentVolumeClaim:
    claimName: {{ required "triton.modelRepository.pvc.claimName is required for the pvc source" $mr.pvc.claimName }}
    readOnly: true
{{- end }}
{{- end }}
