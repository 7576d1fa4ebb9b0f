{{/*
Shared pieces of the NeuroShard templates. Components are named by fixed Service names
(layer-registry, diloco-aggregator, ledger, swarm-gateway, neuroshard-operator), because the
operator and the workers it creates dial those names; one release per namespace.
*/}}

{{- define "neuroshard.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end }}

{{/* An image of this repository: dict "root" $ "name" "<image name>". */}}
{{- define "neuroshard.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .name (include "neuroshard.tag" .root) -}}
{{- end }}

{{/* Labels of every object: dict "root" $ "name" "<component>". */}}
{{- define "neuroshard.labels" -}}
{{ include "neuroshard.selectorLabels" . }}
app.kubernetes.io/part-of: neuroshard
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{- define "neuroshard.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{/* https, or http with tls.enabled false. */}}
{{- define "neuroshard.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end -}}
{{- end }}

{{- define "neuroshard.tlsSecretName" -}}
{{- if eq .Values.tls.mode "existingSecret" -}}
{{- required "tls.existingSecret is required with tls.mode existingSecret" .Values.tls.existingSecret -}}
{{- else -}}
neuroshard-tls
{{- end -}}
{{- end }}

{{- define "neuroshard.keysSecretName" -}}
{{- default "neuroshard-keys" .Values.keys.existingSecret -}}
{{- end }}

{{- define "neuroshard.postgresSecretName" -}}
neuroshard-postgresql
{{- end }}

{{- define "neuroshard.apiKeysSecretName" -}}
{{- default "swarm-gateway-api-keys" .Values.gateway.apiKeys.existingSecret -}}
{{- end }}

{{/* A string as a TOML string literal (JSON's escapes are TOML's), for env values the
services parse as TOML first: "123" or "true" stay strings. */}}
{{- define "neuroshard.tomlString" -}}
{{- toString . | toJson -}}
{{- end }}

{{/* A number as a TOML float (10000 -> 10000.0). */}}
{{- define "neuroshard.float" -}}
{{- $s := toString . -}}
{{- if regexMatch "^-?[0-9]+$" $s }}{{ $s }}.0{{ else }}{{ $s }}{{ end -}}
{{- end }}

{{/* Every DNS name the shared certificate carries. */}}
{{- define "neuroshard.dnsNames" -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list -}}
{{- range list "layer-registry" "diloco-aggregator" "ledger" "swarm-gateway" "neuroshard-operator" -}}
{{- $names = concat $names (list . (printf "%s.%s.svc" . $ns) (printf "%s.%s.svc.cluster.local" . $ns)) -}}
{{- end -}}
{{- $names = concat $names (list (printf "*.%s.svc" $ns) (printf "*.%s.svc.cluster.local" $ns) "localhost") -}}
{{- $names = concat $names .Values.tls.extraDnsNames -}}
{{- toJson $names -}}
{{- end }}

{{/* Pod-level security: uid/gid 10001, the images' user. */}}
{{- define "neuroshard.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "neuroshard.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* imagePullSecrets, when any. */}}
{{- define "neuroshard.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* nodeSelector, tolerations, affinity of a component's values. */}}
{{- define "neuroshard.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The init container that copies one service key out of the keys Secret with mode 0600
(the services refuse a key others can read): dict "root" $ "image" "<name>" "key" "<file>". */}}
{{- define "neuroshard.keyInit" -}}
- name: install-key
  image: {{ include "neuroshard.image" (dict "root" .root "name" .image) }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command:
    - /bin/sh
    - -c
    - install -m 0600 /var/run/neuroshard/key-secret/{{ .key }} /var/run/neuroshard/key/{{ .key }}
  securityContext:
    {{- include "neuroshard.containerSecurityContext" . | nindent 4 }}
  resources:
    requests:
      cpu: 10m
      memory: 16Mi
    limits:
      memory: 64Mi
  volumeMounts:
    - name: key-secret
      mountPath: /var/run/neuroshard/key-secret
      readOnly: true
    - name: key
      mountPath: /var/run/neuroshard/key
{{- end }}

{{/* The key volumes: dict "root" $ "key" "<file>". */}}
{{- define "neuroshard.keyVolumes" -}}
- name: key-secret
  secret:
    secretName: {{ include "neuroshard.keysSecretName" .root }}
    defaultMode: 0440
    items:
      - key: {{ .key }}
        path: {{ .key }}
- name: key
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}

{{- define "neuroshard.keyMount" -}}
- name: key
  mountPath: /var/run/neuroshard/key
  readOnly: true
{{- end }}

{{/* The TLS volume and mount (only with tls.enabled). */}}
{{- define "neuroshard.tlsVolume" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "neuroshard.tlsSecretName" . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "neuroshard.tlsMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/neuroshard/tls
  readOnly: true
{{- end }}
{{- end }}

{{/* [tls] of a service: dict "root" $ "prefix" "NEUROSHARD_X". */}}
{{- define "neuroshard.tlsEnv" -}}
{{- if .root.Values.tls.enabled }}
- name: {{ .prefix }}_TLS__CERT_FILE
  value: /etc/neuroshard/tls/tls.crt
- name: {{ .prefix }}_TLS__KEY_FILE
  value: /etc/neuroshard/tls/tls.key
- name: {{ .prefix }}_TLS__CA_FILE
  value: /etc/neuroshard/tls/ca.crt
{{- else }}
- name: {{ .prefix }}_TLS__INSECURE_PLAINTEXT
  value: "true"
{{- end }}
{{- end }}

{{/* The OTLP endpoint, when tracing is on. */}}
{{- define "neuroshard.otelEnv" -}}
{{- if .Values.otel.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ default "http://otel-collector:4317" .Values.otel.endpoint | quote }}
{{- end }}
{{- end }}

{{/* database_url and database_tls: dict "root" $ "prefix" "NEUROSHARD_X" "component"
"registry" "values" <component values>. */}}
{{- define "neuroshard.databaseEnv" -}}
{{- $root := .root -}}
- name: {{ .prefix }}_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if $root.Values.postgresql.enabled }}
      name: {{ include "neuroshard.postgresSecretName" $root }}
      {{- else }}
      name: {{ required "externalDatabase.existingSecret is required with postgresql.enabled false" $root.Values.externalDatabase.existingSecret }}
      {{- end }}
      key: {{ .component }}
- name: {{ .prefix }}_DATABASE_TLS__SSLMODE
  value: {{ .values.database.sslmode }}
{{- if eq .values.database.sslmode "verify-full" }}
- name: {{ .prefix }}_DATABASE_TLS__ROOT_CERT_FILE
  value: /etc/neuroshard/postgres/root.crt
{{- end }}
{{- end }}

{{/* The database CA volume and mount, with sslmode verify-full: the component's values. */}}
{{- define "neuroshard.dbCaVolume" -}}
{{- if eq .database.sslmode "verify-full" }}
- name: database-ca
  secret:
    secretName: {{ required "database.rootCertSecret is required with sslmode verify-full" .database.rootCertSecret }}
    defaultMode: 0444
    items:
      - key: root.crt
        path: root.crt
{{- end }}
{{- end }}

{{- define "neuroshard.dbCaMount" -}}
{{- if eq .database.sslmode "verify-full" }}
- name: database-ca
  mountPath: /etc/neuroshard/postgres
  readOnly: true
{{- end }}
{{- end }}

{{/* [model]: dict "root" $ "prefix" "NEUROSHARD_X". */}}
{{- define "neuroshard.modelEnv" -}}
{{- $m := .root.Values.model }}
- name: {{ .prefix }}_MODEL__VOCAB_SIZE
  value: {{ $m.vocabSize | int64 | quote }}
- name: {{ .prefix }}_MODEL__HIDDEN_SIZE
  value: {{ $m.hiddenSize | int64 | quote }}
- name: {{ .prefix }}_MODEL__NUM_LAYERS
  value: {{ $m.numLayers | int64 | quote }}
- name: {{ .prefix }}_MODEL__NUM_HEADS
  value: {{ $m.numHeads | int64 | quote }}
- name: {{ .prefix }}_MODEL__NUM_KV_HEADS
  value: {{ $m.numKvHeads | int64 | quote }}
- name: {{ .prefix }}_MODEL__INTERMEDIATE_SIZE
  value: {{ $m.intermediateSize | int64 | quote }}
- name: {{ .prefix }}_MODEL__ROPE_THETA
  value: {{ include "neuroshard.float" $m.ropeTheta | quote }}
- name: {{ .prefix }}_MODEL__RMS_EPS
  value: {{ include "neuroshard.float" $m.rmsEps | quote }}
- name: {{ .prefix }}_MODEL__MAX_SEQ_LEN
  value: {{ $m.maxSeqLen | int64 | quote }}
{{- end }}

{{/* A PodDisruptionBudget: dict "root" $ "name" "<component>". */}}
{{- define "neuroshard.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "neuroshard.labels" . | nindent 4 }}
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      {{- include "neuroshard.selectorLabels" . | nindent 6 }}
{{- end }}

{{/* Scratch space, since root filesystems are read-only. */}}
{{- define "neuroshard.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "neuroshard.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}
