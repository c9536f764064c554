{{/* Building blocks of networkpolicy.yaml. */}}

{{- define "imaging-cds.npRule" -}}
{{- /* (dict "dir" "from"|"to" "peers" list "ports" list-of-ints) */ -}}
- ports:
    {{- range .ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
  {{- with .peers }}
  {{ $.dir }}:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- define "imaging-cds.npPods" -}}
- podSelector:
    matchLabels:
      {{- include "imaging-cds.selectorLabels" . | nindent 6 }}
{{- end }}
{{- define "imaging-cds.npDns" -}}
- ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
  {{- with .Values.networkPolicy.dns }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- define "imaging-cds.npRedisEgress" -}}
{{- if .Values.redis.enabled -}}
{{ include "imaging-cds.npRule" (dict "dir" "to" "peers" (include "imaging-cds.npPods" (dict "root" . "component" "redis") | fromYamlArray) "ports" (list 6379)) }}
{{- else -}}
{{ include "imaging-cds.npRule" (dict "dir" "to" "peers" .Values.networkPolicy.egress.redis "ports" (list .Values.networkPolicy.egress.redisPort)) }}
{{- end -}}
{{- end }}
