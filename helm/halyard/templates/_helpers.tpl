{{/* The chart's name, or nameOverride. */}}
{{- define "halyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The operator's objects' name. */}}
{{- define "halyard.operator" -}}
{{- printf "%s-operator" (include "halyard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's name, or fullnameOverride. */}}
{{- define "halyard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "halyard.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "halyard.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The HalyardCluster's name: a StatefulSet of it names pods <name>-<ordinal>. */}}
{{- define "halyard.clusterName" -}}
{{- default .Release.Name .Values.cluster.name | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "halyard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: halyard
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "halyard.operatorSelector" -}}
app.kubernetes.io/name: halyard-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Every namespace (a ClusterRole) or the listed ones (a Role in each). */}}
{{- define "halyard.watchAll" -}}
{{- if has "*" .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{- define "halyard.watchedNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- join "," .Values.operator.watchNamespaces }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}
