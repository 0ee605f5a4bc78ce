{{/* Names, labels and the small decisions every template shares. */}}

{{- define "integrad.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "integrad.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "integrad.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "integrad.selectorLabels" -}}
app.kubernetes.io/name: {{ include "integrad.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "integrad.labels" -}}
helm.sh/chart: {{ include "integrad.chart" . }}
{{ include "integrad.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "integrad.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "integrad.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image: the CPU build, or the CUDA build (same tag + suffix) when gpu.enabled. */}}
{{- define "integrad.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.gpu.enabled }}
{{- $tag = printf "%s%s" $tag .Values.gpu.imageTagSuffix }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* True when the model repository is a volume (anything but the image's demo). */}}
{{- define "integrad.modelsVolume" -}}
{{- if ne .Values.models.source "image" }}true{{ end }}
{{- end }}

{{/* Where integrad reads its models: INTEGRAD_MODELS. */}}
{{- define "integrad.modelsPath" -}}
{{- if eq .Values.models.source "image" }}/opt/integrad/models
{{- else if .Values.models.subPath }}{{ trimSuffix "/" .Values.models.mountPath }}/{{ .Values.models.subPath }}
{{- else }}{{ .Values.models.mountPath }}
{{- end }}
{{- end }}

{{/* The plaintext health-only port (--health-listen), or nothing: it runs when TLS is on (the kubelet's gRPC probe is plaintext and has no client certificate) and ports.health is set. */}}
{{- define "integrad.healthPort" -}}
{{- if and .Values.tls.enabled .Values.ports.health }}{{ .Values.ports.health }}{{ end }}
{{- end }}

{{/* The probe action: gRPC health on the health port when it runs, else on the gRPC port; with type auto, TCP only where neither can work (TLS on, no health port). */}}
{{- define "integrad.probeAction" -}}
{{- $type := .Values.probes.type }}
{{- $healthPort := include "integrad.healthPort" . }}
{{- if eq $type "auto" }}
{{- $type = ternary "tcp" "grpc" (and .Values.tls.enabled (not $healthPort)) }}
{{- end }}
{{- if eq $type "grpc" }}
grpc:
  port: {{ $healthPort | default .Values.ports.grpc }}
{{- else }}
tcpSocket:
  port: grpc
{{- end }}
{{- end }}

{{- define "integrad.tlsClientCASecret" -}}
{{- default .Values.tls.secretName .Values.tls.clientCA.secretName }}
{{- end }}

{{/* .Values.config as TOML. Whole numbers stay integers (YAML numbers reach templates as floats). */}}
{{- define "integrad.configToml" -}}
{{- range $key, $value := .Values.config }}
{{- if kindIs "string" $value }}
{{ $key }} = {{ $value | toJson }}
{{- else if or (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value) }}
{{- if eq (float64 $value) (floor $value) }}
{{ $key }} = {{ int64 $value }}
{{- else }}
{{ $key }} = {{ $value }}
{{- end }}
{{- else if kindIs "bool" $value }}
{{ $key }} = {{ $value }}
{{- else }}
{{- fail (printf "config.%s: only strings, numbers and booleans go in the config file" $key) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The explain-batch Job: its name (<fullname>-explain-batch[-<runId>], short enough for the pods' hostnames, <job>-<index>). */}}
{{- define "integrad.batchJob.name" -}}
{{- $name := printf "%s-explain-batch" (include "integrad.fullname" .) }}
{{- with .Values.batchJob.runId }}
{{- printf "%s-%s" ($name | trunc (int (sub 55 (len .))) | trimSuffix "-") . }}
{{- else }}
{{- $name | trunc 56 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The Job's pods must not carry the server's selector labels (name + instance): the Service, the PDB and the NetworkPolicy would take them for server pods. */}}
{{- define "integrad.batchJob.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-explain-batch" (include "integrad.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: explain-batch
{{- end }}

{{- define "integrad.batchJob.labels" -}}
helm.sh/chart: {{ include "integrad.chart" . }}
{{ include "integrad.batchJob.selectorLabels" . }}
app.kubernetes.io/part-of: {{ include "integrad.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The chart's own Service, as the explain-batch Job's --server (https:// under tls.enabled). */}}
{{- define "integrad.batchJob.serverHost" -}}
{{- default (printf "%s.%s.svc" (include "integrad.fullname" .) .Release.Namespace) .Values.batchJob.serverHost }}
{{- end }}

{{- define "integrad.batchJob.serverURL" -}}
{{- printf "%s://%s:%d" (ternary "https" "http" .Values.tls.enabled) (include "integrad.batchJob.serverHost" .) (int .Values.ports.grpc) }}
{{- end }}
