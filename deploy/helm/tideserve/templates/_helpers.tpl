{{/* Object names are DNS labels: at most 63 characters. */}}
{{- define "tideserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tideserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<part>", still a DNS label. Call with (list $ "part"). */}}
{{- define "tideserve.part" -}}
{{- $part := index . 1 -}}
{{- $prefix := include "tideserve.fullname" (index . 0) | trunc (int (sub 62 (len $part))) | trimSuffix "-" -}}
{{- printf "%s-%s" $prefix $part -}}
{{- end -}}

{{- define "tideserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tideserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tideserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tideserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels of one component's objects, and its selector. Call with (list $ "gateway"). */}}
{{- define "tideserve.componentLabels" -}}
{{ include "tideserve.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "tideserve.componentSelector" -}}
{{ include "tideserve.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "tideserve.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Where the control plane deploys services. */}}
{{- define "tideserve.servicesNamespace" -}}
{{- .Values.kubernetes.namespace | default .Release.Namespace -}}
{{- end -}}

{{- define "tideserve.controlPlane.serviceAccountName" -}}
{{- if .Values.controlPlane.serviceAccount.create -}}
{{- .Values.controlPlane.serviceAccount.name | default (include "tideserve.part" (list . "control-plane")) -}}
{{- else -}}
{{- required "controlPlane.serviceAccount.name is required when controlPlane.serviceAccount.create is false" .Values.controlPlane.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tideserve.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create -}}
{{- .Values.gateway.serviceAccount.name | default (include "tideserve.part" (list . "gateway")) -}}
{{- else -}}
{{- required "gateway.serviceAccount.name is required when gateway.serviceAccount.create is false" .Values.gateway.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret with the connection URLs (and the bundled database's password). */}}
{{- define "tideserve.connectionsSecret" -}}
{{- include "tideserve.part" (list . "connections") -}}
{{- end -}}

{{/*
Exactly one of bundled and external for the database and for Redis: the processes need both, and
two sources would leave one of them silently unused.
*/}}
{{- define "tideserve.validate" -}}
{{- $db := .Values.externalDatabase -}}
{{- if and $db.url $db.existingSecret -}}
{{- fail "externalDatabase: set either url or existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.postgresql.enabled (or $db.url $db.existingSecret) -}}
{{- fail "database: both the bundled PostgreSQL (postgresql.enabled=true) and externalDatabase are set; set postgresql.enabled=false to use the external one, or clear externalDatabase" -}}
{{- end -}}
{{- if not (or .Values.postgresql.enabled $db.url $db.existingSecret) -}}
{{- fail "database: none configured; set postgresql.enabled=true for the bundled PostgreSQL, or externalDatabase.url or externalDatabase.existingSecret" -}}
{{- end -}}
{{- if and .Values.redis.enabled .Values.externalRedis.url -}}
{{- fail "redis: both the bundled Redis (redis.enabled=true) and externalRedis.url are set; set redis.enabled=false to use the external one, or clear externalRedis.url" -}}
{{- end -}}
{{- if not (or .Values.redis.enabled .Values.externalRedis.url) -}}
{{- fail "redis: none configured; set redis.enabled=true for the bundled Redis, or externalRedis.url" -}}
{{- end -}}
{{- end -}}

{{/* The environment both processes share: home, store and Redis. */}}
{{- define "tideserve.commonEnv" -}}
- name: TIDESERVE_HOME
  value: /var/lib/tideserve
- name: TIDESERVE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if .Values.externalDatabase.existingSecret }}
      name: {{ .Values.externalDatabase.existingSecret }}
      key: {{ .Values.externalDatabase.existingSecretKey }}
      {{- else }}
      name: {{ include "tideserve.connectionsSecret" . }}
      key: database-url
      {{- end }}
- name: TIDESERVE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "tideserve.connectionsSecret" . }}
      key: redis-url
{{- end -}}

{{/*
Rolls the pods when the connection settings change (env from a Secret is read only at start). Over
the values, not the rendered Secret: a generated password would change it on every render.
*/}}
{{- define "tideserve.connectionsChecksum" -}}
{{- list .Values.postgresql.enabled .Values.postgresql.auth .Values.externalDatabase .Values.redis.enabled .Values.externalRedis | toJson | sha256sum -}}
{{- end -}}
