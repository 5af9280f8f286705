{{/* Name of the chart. */}}
{{- define "postwarden.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the release's objects: the release name when it already says postwarden. */}}
{{- define "postwarden.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the operator pods (immutable in a Deployment). */}}
{{- define "postwarden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "postwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of every object of the chart. No chart version or release revision: an upgrade
     that changes nothing else must not change the objects (and show no Argo CD diff). */}}
{{- define "postwarden.labels" -}}
{{ include "postwarden.selectorLabels" . }}
app.kubernetes.io/part-of: postwarden
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "postwarden.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "postwarden.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "postwarden.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces the operator manages, for monitors: the watched one, or all. */}}
{{- define "postwarden.namespaceSelector" -}}
{{- if .Values.watchNamespace -}}
matchNames:
  - {{ .Values.watchNamespace }}
{{- else -}}
any: true
{{- end -}}
{{- end -}}
