{{/* The chart name, overridable. */}}
{{- define "mai.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: the release name when it already contains the chart name (so
`helm install memgraph-address-injector ...` gives the same names as the kustomize base),
else release-chart.
*/}}
{{- define "mai.fullname" -}}
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

{{- define "mai.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mai.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mai.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mai.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mai.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mai.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mai.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding tls.crt/tls.key that the Deployment mounts. */}}
{{- define "mai.tlsSecretName" -}}
{{- if eq .Values.certificates.mode "existingSecret" }}
{{- required "certificates.existingSecret.name is required with certificates.mode=existingSecret" .Values.certificates.existingSecret.name }}
{{- else }}
{{- printf "%s-tls" (include "mai.fullname" .) }}
{{- end }}
{{- end }}

{{/* The DNS names the API server uses to reach the Service. */}}
{{- define "mai.dnsNames" -}}
{{- $svc := include "mai.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- list (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) | toJson }}
{{- end }}

{{/* MAI_REQUEST_BUDGET_MS: explicit, or min(3000, 60% of timeoutSeconds); below the webhook timeout. */}}
{{- define "mai.requestBudgetMs" -}}
{{- $timeout := mul (int .Values.webhook.timeoutSeconds) 1000 }}
{{- if kindIs "invalid" .Values.config.requestBudgetMs }}
{{- min 3000 (div (mul $timeout 6) 10) }}
{{- else }}
{{- $ms := int .Values.config.requestBudgetMs }}
{{- if ge $ms $timeout }}
{{- fail (printf "config.requestBudgetMs (%d) must be below webhook.timeoutSeconds (%d ms)" $ms $timeout) }}
{{- end }}
{{- $ms }}
{{- end }}
{{- end }}

{{/*
The generated CA and serving certificate as a dict of base64 values (ca.crt, tls.crt,
tls.key): the existing Secret's when there is one (upgrades keep the CA, so caBundle does
not change), else fresh ones. Memoised in .Values so the Secret and the caBundle agree.
*/}}
{{- define "mai.generatedCerts" -}}
{{- if not (hasKey .Values "__generatedCerts") }}
{{- $name := printf "%s-tls" (include "mai.fullname" .) }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $name }}
{{- $data := dict }}
{{- if and $existing $existing.data (index $existing.data "ca.crt") (index $existing.data "tls.crt") (index $existing.data "tls.key") }}
{{- $data = dict "ca.crt" (index $existing.data "ca.crt") "tls.crt" (index $existing.data "tls.crt") "tls.key" (index $existing.data "tls.key") }}
{{- else }}
{{- $days := int .Values.certificates.generated.validityDays }}
{{- $ca := genCAWithKey (printf "%s-ca" (include "mai.fullname" .)) $days (genPrivateKey "ecdsa") }}
{{- $dns := include "mai.dnsNames" . | fromJsonArray }}
{{- $cert := genSignedCertWithKey (first $dns) .Values.certificates.generated.ipAddresses $dns $days $ca (genPrivateKey "ecdsa") }}
{{- $data = dict "ca.crt" ($ca.Cert | b64enc) "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) }}
{{- end }}
{{- $_ := set .Values "__generatedCerts" $data }}
{{- end }}
{{- toJson (get .Values "__generatedCerts") }}
{{- end }}

{{/* The caBundle of the webhook configuration; empty with cert-manager (cainjector fills it). */}}
{{- define "mai.caBundle" -}}
{{- if .Values.webhook.caBundle }}
{{- .Values.webhook.caBundle }}
{{- else if eq .Values.certificates.mode "generated" }}
{{- index (include "mai.generatedCerts" . | fromJson) "ca.crt" }}
{{- else if eq .Values.certificates.mode "existingSecret" }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "mai.tlsSecretName" .) }}
{{- $ca := "" }}
{{- if and $secret $secret.data }}
{{- $ca = index $secret.data "ca.crt" | default "" }}
{{- end }}
{{- required "certificates.mode=existingSecret: set webhook.caBundle (base64 of the CA PEM), or put ca.crt into the Secret" $ca }}
{{- end }}
{{- end }}

{{/* The CEL matchCondition: a memgraph image or one of the container names. */}}
{{- define "mai.matchExpression" -}}
{{- $names := list }}
{{- range .Values.config.containerNames }}
{{- $names = append $names (printf "'%s'" .) }}
{{- end -}}
object.spec.containers.exists(c, ((has(c.image) && c.image.matches('(^|/)memgraph/memgraph(-mage)?([:@].*)?$')) || c.name in [{{ join ", " $names }}]) && (c.name in ['memgraph-coordinator', 'memgraph-data'] || (has(c.args) && c.args.exists(a, a.matches('^--?(management|coordinator)[-_](port|id)(=|$)'))) || (has(c.command) && c.command.exists(a, a.matches('^--?(management|coordinator)[-_](port|id)(=|$)'))) || (has(c.env) && c.env.exists(e, e.name in ['MEMGRAPH_MANAGEMENT_PORT', 'MEMGRAPH_COORDINATOR_PORT', 'MEMGRAPH_COORDINATOR_ID']))))
{{- end }}

{{/* The served namespaces, comma-separated; refused when the reconciler is on without any. */}}
{{- define "mai.reconcileNamespaces" -}}
{{- if not .Values.routing.reconcile.namespaces -}}
{{- fail "routing.reconcile.enabled needs routing.reconcile.namespaces: the namespaces of the Memgraph HA releases it may send Bolt credentials to" -}}
{{- end -}}
{{- join "," .Values.routing.reconcile.namespaces -}}
{{- end -}}
