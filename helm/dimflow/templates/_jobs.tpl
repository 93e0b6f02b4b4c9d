{{/*
The design and paint Job manifests. They are not installed as objects: they are embedded as text in
the jobs ConfigMaps (keys design-job.yaml, paint-job.yaml), and `dimflow submit` creates them in
order (design, wait for success, then paint) so the GPU pool never waits on the designer.

Argument: (dict "root" $ "variant" "" | "rerender" "jobSpec" <the job spec>).
The manifests carry no namespace: `dimflow submit --namespace` decides where they go.
*/}}

{{- define "dimflow.embeddedJobLabels" -}}
{{ include "dimflow.selectorLabels" .root }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: dimflow-submit
app.kubernetes.io/part-of: dimflow
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "dimflow.jobAnnotations" -}}
# checkov: the namespace is chosen when `dimflow submit --namespace NS` creates the Job.
checkov.io/skip1: CKV_K8S_21=Namespace is set at creation by dimflow submit --namespace; the manifest is namespace-agnostic
# checkov: images are fixed release tags from values (images.*.tag, "latest" is refused) pulled with
# imagePullPolicy Always; set images.*.digest to pin by digest.
checkov.io/skip2: CKV_K8S_43=Images use fixed release tags with imagePullPolicy Always; images.*.digest pins by digest
{{- end }}

{{- define "dimflow.designJob" -}}
{{- $root := .root }}
{{- $v := $root.Values -}}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "dimflow.jobName" (dict "root" $root "variant" .variant "stage" "design") }}
  labels:
    {{- include "dimflow.embeddedJobLabels" (dict "root" $root "component" "design") | nindent 4 }}
    {{- with $v.kueue.queueName }}
    kueue.x-k8s.io/queue-name: {{ . }}
    {{- end }}
  annotations:
    {{- include "dimflow.jobAnnotations" . | nindent 4 }}
    {{- if $v.apiKey.enabled }}
    # checkov: the designer SDK (openai) reads its key from an environment variable
    # (jobSpec.designer.api_key_env); the value comes from an existing Secret by reference.
    checkov.io/skip3: CKV_K8S_35=The designer client reads its API key from an env var; it is a secretKeyRef to an existing Secret
    {{- end }}
spec:
  {{- if $v.kueue.queueName }}
  suspend: true
  {{- end }}
  backoffLimit: {{ $v.design.backoffLimit }}
  activeDeadlineSeconds: {{ $v.design.activeDeadlineSeconds }}
  ttlSecondsAfterFinished: {{ $v.design.ttlSecondsAfterFinished }}
  {{- include "dimflow.podFailurePolicy" . | nindent 2 }}
  template:
    metadata:
      labels:
        {{- include "dimflow.embeddedJobLabels" (dict "root" $root "component" "design") | nindent 8 }}
    spec:
      serviceAccountName: {{ include "dimflow.workloadServiceAccountName" $root }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      restartPolicy: Never
      securityContext:
        {{- include "dimflow.podSecurityContext" $root | nindent 8 }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.design.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $v.design.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.design.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.design.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: dimflow
          image: {{ include "dimflow.image" $v.images.cpu }}
          imagePullPolicy: {{ $v.images.cpu.pullPolicy }}
          command:
            - dimflow
            - run
            - /etc/dimflow/job.yaml
            - --stage
            - design
            - --no-progress
          env:
            {{- include "dimflow.workloadEnv" $root | nindent 12 }}
            {{- include "dimflow.apiKeyEnvVar" (dict "root" $root "jobSpec" .jobSpec) | nindent 12 }}
          securityContext:
            {{- include "dimflow.containerSecurityContext" $root | nindent 12 }}
          resources:
            {{- include "dimflow.resources" $v.design.resources | nindent 12 }}
          terminationMessagePolicy: FallbackToLogsOnError
          volumeMounts:
            - name: spec
              mountPath: /etc/dimflow
              readOnly: true
            - name: cache
              mountPath: /cache
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: spec
          configMap:
            name: {{ include "dimflow.specConfigMapName" . }}
        {{- include "dimflow.cacheVolume" $root | nindent 8 }}
        {{- include "dimflow.tmpVolume" $root | nindent 8 }}
{{- end }}

{{- define "dimflow.paintJob" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $shards := int $v.paint.shards }}
{{- $parallelism := $shards }}
{{- if not (kindIs "invalid" $v.paint.parallelism) }}{{ $parallelism = int $v.paint.parallelism }}{{ end }}
{{- $maxFailed := $shards }}
{{- if not (kindIs "invalid" $v.paint.maxFailedIndexes) }}{{ $maxFailed = int $v.paint.maxFailedIndexes }}{{ end }}
{{- if gt $maxFailed $shards }}
{{- fail (printf "paint.maxFailedIndexes (%d) must not exceed paint.shards (%d)" $maxFailed $shards) }}
{{- end }}
{{- $resources := deepCopy $v.paint.resources }}
{{- $_ := set $resources.limits "nvidia.com/gpu" (int $v.paint.gpusPerPod) }}
{{- $_ := set $resources.requests "nvidia.com/gpu" (int $v.paint.gpusPerPod) -}}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "dimflow.jobName" (dict "root" $root "variant" .variant "stage" "paint") }}
  labels:
    {{- include "dimflow.embeddedJobLabels" (dict "root" $root "component" "paint") | nindent 4 }}
    {{- with $v.kueue.queueName }}
    kueue.x-k8s.io/queue-name: {{ . }}
    {{- end }}
  annotations:
    {{- include "dimflow.jobAnnotations" . | nindent 4 }}
spec:
  {{- if $v.kueue.queueName }}
  suspend: true
  {{- end }}
  completionMode: Indexed
  completions: {{ $shards }}
  parallelism: {{ $parallelism }}
  backoffLimitPerIndex: {{ $v.paint.backoffLimitPerIndex }}
  maxFailedIndexes: {{ $maxFailed }}
  activeDeadlineSeconds: {{ $v.paint.activeDeadlineSeconds }}
  ttlSecondsAfterFinished: {{ $v.paint.ttlSecondsAfterFinished }}
  {{- include "dimflow.podFailurePolicy" . | nindent 2 }}
  template:
    metadata:
      labels:
        {{- include "dimflow.embeddedJobLabels" (dict "root" $root "component" "paint") | nindent 8 }}
    spec:
      serviceAccountName: {{ include "dimflow.workloadServiceAccountName" $root }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      restartPolicy: Never
      securityContext:
        {{- include "dimflow.podSecurityContext" $root | nindent 8 }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.paint.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $v.paint.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      tolerations:
        - key: nvidia.com/gpu
          operator: Exists
          effect: NoSchedule
        {{- with $v.paint.tolerations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.paint.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: dimflow
          image: {{ include "dimflow.image" $v.images.cuda }}
          imagePullPolicy: {{ $v.images.cuda.pullPolicy }}
          command:
            - dimflow
            - run
            - /etc/dimflow/job.yaml
            - --stage
            - paint
            - --no-progress
            - --shard-index
            - $(JOB_COMPLETION_INDEX)
            - --num-shards
            - {{ $shards | quote }}
          env:
            # Set by the Job controller too; spelled out so $(JOB_COMPLETION_INDEX) above always expands.
            - name: JOB_COMPLETION_INDEX
              valueFrom:
                fieldRef:
                  fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
            # One run id for all shards of this Job (the Job's uid); `dimflow submit` may set a value instead.
            - name: DIMFLOW_RUN_ID
              valueFrom:
                fieldRef:
                  fieldPath: metadata.labels['batch.kubernetes.io/controller-uid']
            {{- include "dimflow.workloadEnv" $root | nindent 12 }}
            {{- with include "dimflow.judgeKeyEnvVar" (dict "root" $root "jobSpec" .jobSpec) }}
            {{- . | nindent 12 }}
            {{- end }}
          securityContext:
            {{- include "dimflow.containerSecurityContext" $root | nindent 12 }}
          resources:
            {{- include "dimflow.resources" $resources | nindent 12 }}
          terminationMessagePolicy: FallbackToLogsOnError
          volumeMounts:
            - name: spec
              mountPath: /etc/dimflow
              readOnly: true
            - name: cache
              mountPath: /cache
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: spec
          configMap:
            name: {{ include "dimflow.specConfigMapName" . }}
        {{- include "dimflow.cacheVolume" $root | nindent 8 }}
        {{- include "dimflow.tmpVolume" $root | nindent 8 }}
{{- end }}
