{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "casola-auth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: release-chart, or the release name when it already holds the chart name.
*/}}
{{- define "casola-auth.fullname" -}}
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

{{- define "casola-auth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels shared by every object of the release.
*/}}
{{- define "casola-auth.labels" -}}
helm.sh/chart: {{ include "casola-auth.chart" . }}
{{ include "casola-auth.selectorLabels" . }}
app.kubernetes.io/version: {{ include "casola-auth.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: casola
{{- end }}

{{/*
Labels that select the release's pods (server and migration Job alike).
*/}}
{{- define "casola-auth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "casola-auth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels that select the server pods only (Deployment selector, Service, PDB, spread).
*/}}
{{- define "casola-auth.serverSelectorLabels" -}}
{{ include "casola-auth.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "casola-auth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "casola-auth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "casola-auth.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
repository:tag, or repository:tag@digest when a digest is pinned.
*/}}
{{- define "casola-auth.image" -}}
{{- $tag := include "casola-auth.imageTag" . }}
{{- if eq $tag "latest" }}
{{- fail "image.tag must pin a version, not \"latest\"" }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "casola-auth.databaseSecret" -}}
{{- default (printf "%s-database" (include "casola-auth.fullname" .)) .Values.database.existingSecret }}
{{- end }}

{{/*
terminationGracePeriodSeconds: preStop sleep + server drain + buffer, or the explicit value
(which must leave room for the sleep and the drain).
*/}}
{{- define "casola-auth.terminationGracePeriodSeconds" -}}
{{- $pre := int .Values.lifecycle.preStopSleepSeconds }}
{{- $drain := int .Values.config.shutdownGraceSeconds }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $pre $drain (int .Values.terminationGraceBufferSeconds) }}
{{- else }}
{{- $explicit := int .Values.terminationGracePeriodSeconds }}
{{- if le $explicit (add $pre $drain) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed lifecycle.preStopSleepSeconds + config.shutdownGraceSeconds (%d)" $explicit (add $pre $drain)) }}
{{- end }}
{{- $explicit }}
{{- end }}
{{- end }}

{{/*
Pod-level security context (server and migration Job).
*/}}
{{- define "casola-auth.podSecurityContext" -}}
runAsNonRoot: true
{{- with .Values.securityContext.runAsUser }}
runAsUser: {{ . }}
{{- end }}
{{- with .Values.securityContext.runAsGroup }}
runAsGroup: {{ . }}
{{- end }}
{{- with .Values.securityContext.fsGroup }}
fsGroup: {{ . }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Container-level security context (server and migration Job).
*/}}
{{- define "casola-auth.containerSecurityContext" -}}
runAsNonRoot: true
{{- with .Values.securityContext.runAsUser }}
runAsUser: {{ . }}
{{- end }}
{{- with .Values.securityContext.runAsGroup }}
runAsGroup: {{ . }}
{{- end }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
DATABASE_URL (and the optional direct URL of the revocation listener), always from a Secret.
*/}}
{{- define "casola-auth.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "casola-auth.databaseSecret" . }}
      key: {{ .Values.database.urlKey }}
{{- if eq (.Values.database.tls | default "verify-full") "verify-full" }}
# Verified TLS to Postgres whatever the URL says (values: database.tls).
- name: CASOLA_AUTH_STORE__REQUIRE_TLS
  value: "true"
{{- end }}
{{- if include "casola-auth.tlsCa" . }}
- name: CASOLA_AUTH_STORE__TLS_CA_FILE
  value: /etc/casola-auth-tls/{{ .Values.database.tlsCa.key }}
{{- end }}
{{- end }}

{{/*
The CA that verifies Postgres's TLS certificate, from an existing ConfigMap or Secret; empty
when none is configured (then the binary trusts the Mozilla roots).
*/}}
{{- define "casola-auth.tlsCa" -}}
{{- with .Values.database.tlsCa }}
{{- if and .configMap .secret }}
{{- fail "database.tlsCa: set configMap or secret, not both" }}
{{- end }}
{{- if or .configMap .secret }}true{{ end }}
{{- end }}
{{- end }}

{{- define "casola-auth.tlsCaVolumeMount" -}}
{{- if include "casola-auth.tlsCa" . }}
- name: postgres-ca
  mountPath: /etc/casola-auth-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "casola-auth.tlsCaVolume" -}}
{{- if include "casola-auth.tlsCa" . }}
{{- with .Values.database.tlsCa }}
- name: postgres-ca
  {{- if .secret }}
  secret:
    secretName: {{ .secret }}
    items:
      - key: {{ .key }}
        path: {{ .key }}
  {{- else }}
  configMap:
    name: {{ .configMap }}
    items:
      - key: {{ .key }}
        path: {{ .key }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{- define "casola-auth.listenDatabaseEnv" -}}
{{- if .Values.database.listen.urlKey }}
- name: CASOLA_AUTH_LISTEN_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ default (include "casola-auth.databaseSecret" .) .Values.database.listen.existingSecret }}
      key: {{ .Values.database.listen.urlKey }}
{{- end }}
{{- end }}
