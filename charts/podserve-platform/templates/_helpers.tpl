{{/* Labels every object of this chart carries. */}}
{{- define "podserve-platform.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end -}}

{{/* The deploy accounts the namespaces name, each once, as a JSON list. */}}
{{- define "podserve-platform.accounts" -}}
{{- $accounts := list -}}
{{- range .Values.namespaces }}{{ $accounts = append $accounts .account }}{{ end -}}
{{- $accounts | uniq | sortAlpha | toJson -}}
{{- end -}}
