// Command provisioner is the storage of the test control plane: it provisions a PersistentVolume
// for every claim of a StorageClass naming it (pinned to the zone of the node the scheduler
// selected when the class waits for the first consumer), grows bound volumes when their class
// allows expansion (as the external resizer does for volumes that need no node step), and deletes
// released volumes whose reclaim policy is Delete. Nodes are simulated, so the volumes are
// hostPath records that nothing mounts.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	provisionedBy = "pv.kubernetes.io/provisioned-by"
	selectedNode  = "volume.kubernetes.io/selected-node"
	zoneLabel     = "topology.kubernetes.io/zone"
)

type provisioner struct {
	name   string
	root   string
	client kubernetes.Interface
	pvs    cache.Indexer
	nodes  cache.Indexer
	sc     cache.Indexer
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the control plane")
	name := flag.String("name", "postwarden.dev/e2e-hostpath", "provisioner name StorageClasses refer to")
	root := flag.String("root", "/var/lib/postwarden-e2e/volumes", "directory the hostPath volumes name")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatalf("kubeconfig: %v", err)
	}
	cfg.UserAgent = "postwarden-e2e-provisioner"
	client := kubernetes.NewForConfigOrDie(cfg)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	factory := informers.NewSharedInformerFactory(client, 30*time.Second)
	pvcInformer := factory.Core().V1().PersistentVolumeClaims().Informer()
	pvInformer := factory.Core().V1().PersistentVolumes().Informer()
	p := &provisioner{
		name: *name, root: *root, client: client,
		pvs:   pvInformer.GetIndexer(),
		nodes: factory.Core().V1().Nodes().Informer().GetIndexer(),
		sc:    factory.Storage().V1().StorageClasses().Informer().GetIndexer(),
	}
	onClaim := func(obj any) {
		if pvc, ok := obj.(*corev1.PersistentVolumeClaim); ok {
			p.claim(ctx, pvc)
		}
	}
	onVolume := func(obj any) {
		if pv, ok := obj.(*corev1.PersistentVolume); ok {
			p.volume(ctx, pv)
		}
	}
	if _, err := pvcInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onClaim, UpdateFunc: func(_, obj any) { onClaim(obj) },
	}); err != nil {
		log.Fatal(err)
	}
	if _, err := pvInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onVolume, UpdateFunc: func(_, obj any) { onVolume(obj) },
	}); err != nil {
		log.Fatal(err)
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	log.Printf("provisioner %s ready", p.name)
	<-ctx.Done()
}

func (p *provisioner) class(name *string) *storagev1.StorageClass {
	if name == nil {
		return nil
	}
	obj, ok, _ := p.sc.GetByKey(*name)
	if !ok {
		return nil
	}
	sc := obj.(*storagev1.StorageClass)
	if sc.Provisioner != p.name {
		return nil
	}
	return sc
}

func (p *provisioner) claim(ctx context.Context, pvc *corev1.PersistentVolumeClaim) {
	sc := p.class(pvc.Spec.StorageClassName)
	if sc == nil || pvc.DeletionTimestamp != nil {
		return
	}
	if pvc.Spec.VolumeName == "" {
		if err := p.provision(ctx, pvc, sc); err != nil {
			log.Printf("provision %s/%s: %v", pvc.Namespace, pvc.Name, err)
		}
		return
	}
	if pvc.Status.Phase == corev1.ClaimBound && sc.AllowVolumeExpansion != nil && *sc.AllowVolumeExpansion {
		if err := p.expand(ctx, pvc); err != nil {
			log.Printf("expand %s/%s: %v", pvc.Namespace, pvc.Name, err)
		}
	}
}

func (p *provisioner) provision(ctx context.Context, pvc *corev1.PersistentVolumeClaim, sc *storagev1.StorageClass) error {
	var affinity *corev1.VolumeNodeAffinity
	if sc.VolumeBindingMode != nil && *sc.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer {
		nodeName := pvc.Annotations[selectedNode]
		if nodeName == "" {
			return nil // the scheduler has not picked a node yet
		}
		obj, ok, _ := p.nodes.GetByKey(nodeName)
		if !ok {
			return fmt.Errorf("selected node %q not found", nodeName)
		}
		if zone := obj.(*corev1.Node).Labels[zoneLabel]; zone != "" {
			affinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: zoneLabel, Operator: corev1.NodeSelectorOpIn, Values: []string{zone}}},
			}}}}
		}
	}
	name := "pvc-" + string(pvc.UID)
	if _, exists, _ := p.pvs.GetByKey(name); exists {
		return nil
	}
	reclaim := corev1.PersistentVolumeReclaimDelete
	if sc.ReclaimPolicy != nil {
		reclaim = *sc.ReclaimPolicy
	}
	dirType := corev1.HostPathDirectoryOrCreate
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{provisionedBy: p.name}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: pvc.Spec.Resources.Requests[corev1.ResourceStorage]},
			AccessModes:                   pvc.Spec.AccessModes,
			VolumeMode:                    pvc.Spec.VolumeMode,
			StorageClassName:              sc.Name,
			PersistentVolumeReclaimPolicy: reclaim,
			MountOptions:                  sc.MountOptions,
			NodeAffinity:                  affinity,
			ClaimRef: &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID},
			PersistentVolumeSource: corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{
				Path: filepath.Join(p.root, name), Type: &dirType}},
		},
	}
	_, err := p.client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{FieldManager: "provisioner"})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err == nil {
		log.Printf("provisioned %s for %s/%s", name, pvc.Namespace, pvc.Name)
	}
	return err
}

// expand grows the volume, then the claim's status, once the claim asks for more than it has.
func (p *provisioner) expand(ctx context.Context, pvc *corev1.PersistentVolumeClaim) error {
	want := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	have := pvc.Status.Capacity[corev1.ResourceStorage]
	if want.Cmp(have) <= 0 {
		return nil
	}
	pv, err := p.client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if current := pv.Spec.Capacity[corev1.ResourceStorage]; current.Cmp(want) < 0 {
		pv.Spec.Capacity[corev1.ResourceStorage] = want
		if _, err := p.client.CoreV1().PersistentVolumes().Update(ctx, pv, metav1.UpdateOptions{FieldManager: "provisioner"}); err != nil {
			return err
		}
	}
	fresh := pvc.DeepCopy()
	if fresh.Status.Capacity == nil {
		fresh.Status.Capacity = corev1.ResourceList{}
	}
	fresh.Status.Capacity[corev1.ResourceStorage] = want
	fresh.Status.Conditions = nil
	fresh.Status.AllocatedResources = nil
	fresh.Status.AllocatedResourceStatuses = nil
	if _, err := p.client.CoreV1().PersistentVolumeClaims(pvc.Namespace).UpdateStatus(ctx, fresh, metav1.UpdateOptions{FieldManager: "provisioner"}); err != nil {
		return err
	}
	log.Printf("expanded %s/%s to %s", pvc.Namespace, pvc.Name, want.String())
	return nil
}

func (p *provisioner) volume(ctx context.Context, pv *corev1.PersistentVolume) {
	if pv.Annotations[provisionedBy] != p.name || pv.Status.Phase != corev1.VolumeReleased ||
		pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete || pv.DeletionTimestamp != nil {
		return
	}
	err := p.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		log.Printf("delete %s: %v", pv.Name, err)
		return
	}
	log.Printf("deleted released %s", pv.Name)
}
