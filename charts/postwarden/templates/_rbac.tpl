{{/*
  The operator's rights, and nothing else. Every rule names its resources and verbs; there are
  no wildcards. Children are written with server-side apply (patch, and create for the first
  apply) and removed by label when no longer desired (delete). PersistentVolumeClaims are read,
  and patched only to grow them when a spec asks for bigger volumes: mail storage is never
  deleted by the operator.
*/}}
{{- define "postwarden.rules" -}}
- apiGroups: ["postwarden.dev"]
  resources: ["maildomains", "mailboxes"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["postwarden.dev"]
  resources: ["maildomains/status", "mailboxes/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["postwarden.dev"]
  resources: ["maildomains/finalizers", "mailboxes/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["configmaps", "secrets", "services", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "patch"]
# The backup Jobs' pods: their termination message carries each run's result.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["batch"]
  resources: ["cronjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["externaldns.k8s.io"]
  resources: ["dnsendpoints"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
{{- end }}
{{- /* Cluster-scoped reads: whether the optional integrations' CRDs are installed, and our own. */}}
{{- define "postwarden.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  resourceNames:
    - maildomains.postwarden.dev
    - mailboxes.postwarden.dev
    - certificates.cert-manager.io
    - dnsendpoints.externaldns.k8s.io
  verbs: ["get"]
{{- end }}
