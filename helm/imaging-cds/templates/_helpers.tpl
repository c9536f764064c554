{{/* Names ------------------------------------------------------------------------------------------------- */}}

{{- define "imaging-cds.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name; components append -gateway, -worker, -triton, -redis (so at most 52 characters). */}}
{{- define "imaging-cds.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "imaging-cds.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imaging-cds.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imaging-cds.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels: call with (dict "root" $ "component" "gateway") ------------------------------------------------- */}}

{{- define "imaging-cds.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imaging-cds.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "imaging-cds.labels" -}}
helm.sh/chart: {{ include "imaging-cds.chart" .root }}
{{ include "imaging-cds.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: imaging-cds
{{- end }}

{{/* Images: repository, then @digest or :tag; never an untagged or "latest" reference. ------------------------ */}}

{{- define "imaging-cds.imageRef" -}}
{{- $img := .image -}}
{{- $tag := default .defaultTag $img.tag | toString -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else if or (eq $tag "") (eq $tag "latest") -}}
{{- fail (printf "image %s needs a pinned tag or a digest, not %q" $img.repository $tag) -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}
{{- end }}

{{- define "imaging-cds.appImage" -}}
{{- include "imaging-cds.imageRef" (dict "image" .Values.image "defaultTag" .Chart.AppVersion) }}
{{- end }}

{{/* Security: the restricted Pod Security Standard, for every pod and container. ------------------------------ */}}

{{- define "imaging-cds.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
fsGroup: {{ .gid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "imaging-cds.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .gid }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Endpoints --------------------------------------------------------------------------------------------- */}}

{{- define "imaging-cds.redisHost" -}}
{{- printf "%s-redis" (include "imaging-cds.fullname" .) }}
{{- end }}

{{- define "imaging-cds.redisAuthSecret" -}}
{{- default (printf "%s-redis-auth" (include "imaging-cds.fullname" .)) .Values.redis.auth.existingSecret }}
{{- end }}

{{- define "imaging-cds.webhookSecret" -}}
{{- default (printf "%s-webhook" (include "imaging-cds.fullname" .)) .Values.webhook.existingSecret }}
{{- end }}

{{/* The workers' Triton: the sidecar in their own pod (loopback), the chart's Triton Service, or an external one. */}}
{{- define "imaging-cds.tritonGrpcUrl" -}}
{{- if include "imaging-cds.tritonSidecar" . }}
{{- printf "127.0.0.1:%d" (int .Values.triton.grpcPort) }}
{{- else if .Values.triton.enabled }}
{{- printf "%s-triton:%d" (include "imaging-cds.fullname" .) (int .Values.triton.grpcPort) }}
{{- else }}
{{- required "triton.external.grpcUrl is required when triton.enabled is false" .Values.triton.external.grpcUrl }}
{{- end }}
{{- end }}

{{- define "imaging-cds.publicWebhookUrl" -}}
{{- if .Values.webhook.publicUrl }}
{{- .Values.webhook.publicUrl }}
{{- else }}
{{- printf "http://%s-gateway.%s.svc:%d/fhir/notify" (include "imaging-cds.fullname" .) .Release.Namespace (int .Values.gateway.httpPort) }}
{{- end }}
{{- end }}

{{/* The TCP port of a URL: the explicit one, else 443 for https and 80 for http. */}}
{{- define "imaging-cds.urlPort" -}}
{{- $u := urlParse . -}}
{{- $parts := splitList ":" $u.host -}}
{{- if gt (len $parts) 1 -}}
{{- last $parts -}}
{{- else if eq $u.scheme "https" -}}
443
{{- else -}}
80
{{- end -}}
{{- end }}

{{/* Where the gateway finds gateway.grpcTls's Secret (tls.crt, tls.key). */}}
{{- define "imaging-cds.grpcTlsDir" -}}
/etc/imaging-cds/grpc-tls
{{- end }}

{{- define "imaging-cds.modelRepositoryPath" -}}
{{- if and (eq .Values.triton.modelRepository.source "pvc") .Values.triton.modelRepository.pvc.sharedWithServices -}}
/models
{{- else -}}
/app/triton_repo
{{- end -}}
{{- end }}

{{/* The environment every gateway and worker container shares (IMAGING_CDS_*, see services/imaging_cds/config.py). */}}
{{- define "imaging-cds.commonEnv" -}}
{{- if .Values.redis.enabled }}
{{- if .Values.redis.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "imaging-cds.redisAuthSecret" . }}
      key: {{ .Values.redis.auth.passwordKey }}
- name: IMAGING_CDS_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "imaging-cds.redisHost" .) | quote }}
{{- else }}
- name: IMAGING_CDS_REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "imaging-cds.redisHost" .) | quote }}
{{- end }}
{{- else if .Values.redis.external.existingSecret }}
- name: IMAGING_CDS_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.urlKey }}
{{- else }}
- name: IMAGING_CDS_REDIS_URL
  value: {{ required "redis.external.url or redis.external.existingSecret is required when redis.enabled is false" .Values.redis.external.url | quote }}
{{- end }}
- name: IMAGING_CDS_FHIR_URL
  value: {{ .Values.fhir.url | quote }}
{{- if eq .Values.fhir.auth "smart" }}
- name: IMAGING_CDS_FHIR_AUTH
  value: smart
- name: IMAGING_CDS_FHIR_SMART_CLIENT_ID
  value: {{ .Values.fhir.smart.clientId | quote }}
- name: IMAGING_CDS_FHIR_SMART_PRIVATE_KEY_FILE
  value: {{ printf "%s/%s" (include "imaging-cds.smartKeyDir" .) .Values.fhir.smart.privateKeyKey | quote }}
{{- with .Values.fhir.smart.scope }}
- name: IMAGING_CDS_FHIR_SMART_SCOPE
  value: {{ . | quote }}
{{- end }}
{{- with .Values.fhir.smart.tokenUrl }}
- name: IMAGING_CDS_FHIR_SMART_TOKEN_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.fhir.smart.keyId }}
- name: IMAGING_CDS_FHIR_SMART_KEY_ID
  value: {{ . | quote }}
{{- end }}
{{- end }}
- name: IMAGING_CDS_REPORT_STATUS
  value: {{ .Values.reports.status | quote }}
- name: IMAGING_CDS_PERFORMER_DISPLAY
  value: {{ .Values.reports.performerDisplay | quote }}
- name: IMAGING_CDS_HTTP_TIMEOUT_S
  value: {{ .Values.app.httpTimeoutSeconds | toString | quote }}
- name: IMAGING_CDS_MODEL_REPOSITORY
  value: {{ include "imaging-cds.modelRepositoryPath" . | quote }}
- name: IMAGING_CDS_QUEUE_PREFIX
  value: {{ .Values.queue.prefix | quote }}
- name: IMAGING_CDS_CONSUMER_GROUP
  value: {{ .Values.queue.consumerGroup | quote }}
- name: IMAGING_CDS_VISIBILITY_TIMEOUT_S
  value: {{ .Values.queue.visibilityTimeoutSeconds | toString | quote }}
- name: IMAGING_CDS_MAX_ATTEMPTS
  value: {{ .Values.queue.maxAttempts | int | quote }}
# The root filesystem is read-only: caches and temporary files go to /tmp (an emptyDir).
- name: HOME
  value: /tmp
- name: TMPDIR
  value: /tmp
{{- end }}

{{/* /tmp on an emptyDir (the root filesystem is read-only): (dict "sizeLimit" "64Mi") */}}
{{- define "imaging-cds.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .sizeLimit }}
{{- end }}

{{/* The gateway's and workers' volumes and mounts: /tmp, and the model repository claim when it is shared. */}}
{{- define "imaging-cds.smartKeyDir" -}}
/var/run/secrets/imaging-cds/smart
{{- end }}

{{- define "imaging-cds.appVolumes" -}}
{{ include "imaging-cds.tmpVolume" (dict "sizeLimit" .sizeLimit) }}
{{- if eq .root.Values.fhir.auth "smart" }}
- name: smart-key
  secret:
    secretName: {{ .root.Values.fhir.smart.existingSecret }}
    # Only the private key, readable by the pod's group (fsGroup) and no one else: 0440.
    items:
      - {key: {{ .root.Values.fhir.smart.privateKeyKey }}, path: {{ .root.Values.fhir.smart.privateKeyKey }}}
    defaultMode: 288
{{- end }}
{{- if eq (include "imaging-cds.modelRepositoryPath" .root) "/models" }}
- name: models
  persistentVolumeClaim:
    claimName: {{ required "triton.modelRepository.pvc.claimName is required for the pvc source" .root.Values.triton.modelRepository.pvc.claimName }}
    readOnly: true
{{- end }}
{{- end }}

{{- define "imaging-cds.appVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if eq .Values.fhir.auth "smart" }}
- name: smart-key
  mountPath: {{ include "imaging-cds.smartKeyDir" . }}
  readOnly: true
{{- end }}
{{- if eq (include "imaging-cds.modelRepositoryPath" .) "/models" }}
- name: models
  mountPath: /models
  readOnly: true
  {{- with .Values.triton.modelRepository.pvc.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
{{- end }}
