{{/* Labels every object carries: kustomize's `labels: part-of vigil` (daemonset/base/kustomization.yaml) and
Helm's own two. Pod templates and selectors get neither, as with kustomize (includeSelectors: false). */}}
{{- define "vigil.labels" -}}
app.kubernetes.io/part-of: vigil
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "vigil.tag" -}}
{{- .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- end }}

{{- define "vigil.agentImage" -}}
{{- $repo := .Values.agent.image.repository -}}
{{- if not $repo -}}
{{- $repo = printf "%s/%s" .Values.image.registry (eq .Values.vendor "amd" | ternary "vigil-agent-rocm" "vigil-agent") -}}
{{- end -}}
{{- printf "%s:%s" $repo (include "vigil.tag" (dict "image" .Values.agent.image "root" .)) -}}
{{- end }}

{{- define "vigil.aggregatorImage" -}}
{{- $repo := .Values.aggregator.image.repository | default (printf "%s/vigil-aggregator" .Values.image.registry) -}}
{{- printf "%s:%s" $repo (include "vigil.tag" (dict "image" .Values.aggregator.image "root" .)) -}}
{{- end }}

{{/* The tuner mode the agent is started with ("" = the config file's, report). */}}
{{- define "vigil.tunerMode" -}}
{{- if .Values.dryRun -}}
{{- if eq .Values.tuner.mode "enforce" -}}
{{- fail "tuner.mode=enforce with dryRun=true: a dry run writes nothing; choose one" -}}
{{- end -}}
dry-run
{{- else if ne .Values.tuner.mode "report" -}}
{{- .Values.tuner.mode -}}
{{- end -}}
{{- end }}

{{/* The agent's vigil.yaml: the base's file verbatim, or with agent.config merged over its settings. */}}
{{- define "vigil.agentConfig" -}}
{{- $file := .Files.Get "files/agent-config.yaml" -}}
{{- if not $file -}}
{{- fail "files/agent-config.yaml is missing from the chart (a link to daemonset/base/agent-config.yaml)" -}}
{{- end -}}
{{- if .Values.agent.config -}}
{{- mergeOverwrite (fromYaml $file) (deepCopy .Values.agent.config) | toYaml -}}
{{- else -}}
{{- $file -}}
{{- end -}}
{{- end }}

{{/* kustomize's name suffix for a generated ConfigMap, so that a changed configuration rolls the pods that mount
it, as `kubectl apply -k` does: the first 10 hex digits of sha256 of {"data":...,"kind":"ConfigMap","name":""}
(kustomize's hasher looks the name up under a path that does not resolve, so it hashes ""), vowel-like digits
mapped to consonants. tests/deploy/test_deploy_helm.py holds it to kubectl kustomize's names. */}}
{{- define "vigil.configMapSuffix" -}}
{{- dict "data" . "kind" "ConfigMap" "name" "" | toJson | sha256sum | trunc 10 | replace "0" "g" | replace "1" "h" | replace "3" "k" | replace "a" "m" | replace "e" "t" -}}
{{- end }}

{{- define "vigil.agentConfigName" -}}
vigil-agent-config-{{ include "vigil.configMapSuffix" (dict "vigil.yaml" (include "vigil.agentConfig" .)) }}
{{- end }}

{{- define "vigil.aggregatorEnv" -}}
{{- $a := .Values.aggregator -}}
{{- dict "VIGIL_HEALTHY_DELAY" (toString $a.healthyDelaySeconds) "VIGIL_HEARTBEAT_TIMEOUT" (toString $a.heartbeatTimeoutSeconds) "VIGIL_HEARTBEAT_INTERVAL" (toString $a.heartbeatIntervalSeconds) "VIGIL_BUDGET_NODES" (toString $a.budget.nodes) "VIGIL_BUDGET_PERCENT" (toString $a.budget.percent) "VIGIL_BUDGET_WINDOW" (toString $a.budget.windowSeconds) "VIGIL_RESYNC" (toString $a.resyncSeconds) | toJson -}}
{{- end }}

{{- define "vigil.aggregatorConfigName" -}}
vigil-aggregator-config-{{ include "vigil.configMapSuffix" (include "vigil.aggregatorEnv" . | fromJson) }}
{{- end }}
