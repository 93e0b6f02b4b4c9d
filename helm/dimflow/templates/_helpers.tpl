{{/* Names, labels, images and the pieces shared by every pod. */}}

{{- define "dimflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 32 | trimSuffix "-" }}
{{- end }}

{{/*
The base of every object name. Truncated to 32 characters so the longest derived name
(<fullname>-rerender-design, 48: a Job name, which becomes a pod label value, at most 63) leaves
room for a run suffix that `dimflow submit` may append.
*/}}
{{- define "dimflow.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 32 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 32 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 32 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dimflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dimflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dimflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dimflow.labels" -}}
helm.sh/chart: {{ include "dimflow.chart" . }}
{{ include "dimflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dimflow
{{- end }}

{{/* Labels of one component: (dict "root" $ "component" "paint") */}}
{{- define "dimflow.componentLabels" -}}
{{ include "dimflow.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "dimflow.componentSelectorLabels" -}}
{{ include "dimflow.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "dimflow.workloadServiceAccountName" -}}
{{- if .Values.serviceAccount.workload.create }}
{{- default (printf "%s-workload" (include "dimflow.fullname" .)) .Values.serviceAccount.workload.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.workload.name }}
{{- end }}
{{- end }}

{{- define "dimflow.orchestratorServiceAccountName" -}}
{{- if .Values.serviceAccount.orchestrator.create }}
{{- default (printf "%s-orchestrator" (include "dimflow.fullname" .)) .Values.serviceAccount.orchestrator.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.orchestrator.name }}
{{- end }}
{{- end }}

{{/* The ConfigMaps: spec (job.yaml) and jobs (design-job.yaml, paint-job.yaml); variant "" or "rerender". */}}
{{- define "dimflow.specConfigMapName" -}}
{{- if .variant }}{{ printf "%s-%s-spec" (include "dimflow.fullname" .root) .variant }}{{ else }}{{ printf "%s-spec" (include "dimflow.fullname" .root) }}{{ end }}
{{- end }}

{{- define "dimflow.jobsConfigMapName" -}}
{{- if .variant }}{{ printf "%s-%s-jobs" (include "dimflow.fullname" .root) .variant }}{{ else }}{{ printf "%s-jobs" (include "dimflow.fullname" .root) }}{{ end }}
{{- end }}

{{- define "dimflow.jobName" -}}
{{- if .variant }}{{ printf "%s-%s-%s" (include "dimflow.fullname" .root) .variant .stage }}{{ else }}{{ printf "%s-%s" (include "dimflow.fullname" .root) .stage }}{{ end }}
{{- end }}

{{/* repository:tag or repository@digest; refuses "latest". Argument: an images.* entry. */}}
{{- define "dimflow.image" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- if eq (toString .tag) "latest" }}
{{- fail (printf "image %s: tag \"latest\" is not allowed; use a fixed release tag or set a digest" .repository) }}
{{- end }}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}
{{- end }}

{{/* Env var name of the designer API key, from the job spec (default OPENAI_API_KEY). */}}
{{- define "dimflow.apiKeyEnv" -}}
{{- $designer := default (dict) .designer }}
{{- default "OPENAI_API_KEY" $designer.api_key_env }}
{{- end }}

{{- define "dimflow.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "dimflow.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Env shared by the workload containers (caches on the /cache volume, HOME on /tmp). */}}
{{- define "dimflow.workloadEnv" -}}
- name: HOME
  value: /tmp
- name: HF_HOME
  value: /cache/huggingface
- name: DIMFLOW_CACHE
  value: /cache/dimflow
- name: HF_HUB_DISABLE_TELEMETRY
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The API key env var from the existing Secret: (dict "root" $ "jobSpec" ...). */}}
{{- define "dimflow.apiKeyEnvVar" -}}
{{- if .root.Values.apiKey.enabled -}}
- name: {{ include "dimflow.apiKeyEnv" .jobSpec }}
  valueFrom:
    secretKeyRef:
      name: {{ required "apiKey.existingSecret is required when apiKey.enabled is true" .root.Values.apiKey.existingSecret }}
      key: {{ .root.Values.apiKey.key }}
{{- end }}
{{- end }}

{{/* The judge's API key env var (paint pods: the judge runs after painting), from the same Secret, for
an openai judge only: (dict "root" $ "jobSpec" ...). */}}
{{- define "dimflow.judgeKeyEnvVar" -}}
{{- $judge := default (dict) .jobSpec.judge }}
{{- if and .root.Values.apiKey.enabled (eq (default "none" $judge.kind) "openai") -}}
- name: {{ default "OPENAI_API_KEY" $judge.api_key_env }}
  valueFrom:
    secretKeyRef:
      name: {{ required "apiKey.existingSecret is required when apiKey.enabled is true" .root.Values.apiKey.existingSecret }}
      key: {{ .root.Values.apiKey.key }}
{{- end }}
{{- end }}

{{- define "dimflow.cacheVolume" -}}
- name: cache
{{- if .Values.modelCache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.modelCache.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.modelCache.sizeLimit }}
{{- end }}
{{- end }}

{{- define "dimflow.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmp.sizeLimit }}
{{- end }}

{{/*
The orchestrator pod spec (submitOnInstall Job and the CronJob): `dimflow submit` against a jobs
ConfigMap. Argument: (dict "root" $ "variant" "" | "rerender").
*/}}
{{- define "dimflow.orchestratorPodSpec" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "dimflow.orchestratorServiceAccountName" $root }}
# The orchestrator talks to the API server (creates and watches the Jobs): it needs its token.
automountServiceAccountToken: true
enableServiceLinks: false
restartPolicy: Never
securityContext:
  {{- include "dimflow.podSecurityContext" $root | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.orchestrator.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.orchestrator.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: dimflow
    image: {{ include "dimflow.image" $root.Values.images.cpu }}
    imagePullPolicy: {{ $root.Values.images.cpu.pullPolicy }}
    command:
      - dimflow
      - submit
      - --in-cluster
      - --jobs-configmap
      - {{ include "dimflow.jobsConfigMapName" . }}
      - --namespace
      - {{ $root.Release.Namespace }}
    env:
      - name: HOME
        value: /tmp
      - name: PYTHONUNBUFFERED
        value: "1"
    securityContext:
      {{- include "dimflow.containerSecurityContext" $root | nindent 6 }}
    resources:
      {{- include "dimflow.resources" $root.Values.orchestrator.resources | nindent 6 }}
    terminationMessagePolicy: FallbackToLogsOnError
    volumeMounts:
      - name: tmp
        mountPath: /tmp
volumes:
  {{- include "dimflow.tmpVolume" $root | nindent 2 }}
{{- end }}

{{/* podFailurePolicy shared by the Jobs: exit code 2 (bad spec / bad input) fails the Job at once; preemption is not a failure. */}}
{{- define "dimflow.podFailurePolicy" -}}
podFailurePolicy:
  rules:
    - action: FailJob
      onExitCodes:
        containerName: dimflow
        operator: In
        values: [2]
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
          status: "True"
{{- end }}

{{/*
requests/limits with every quantity as a string ("2", "4Gi", "1" GPU): the API accepts numbers too,
but the kubernetes Python client that `dimflow submit` uses accepts only strings.
Argument: a resources map {requests: {...}, limits: {...}}.
*/}}
{{- define "dimflow.resources" -}}
{{- $resources := . }}
{{- $out := "" }}
{{- range $side := list "limits" "requests" }}
{{- with index $resources $side }}
{{- $out = printf "%s%s:\n" $out $side }}
{{- range $name, $value := . }}
{{- $out = printf "%s  %s: %s\n" $out $name ($value | toString | quote) }}
{{- end }}
{{- end }}
{{- end }}
{{- $out | trimSuffix "\n" }}
{{- end }}
