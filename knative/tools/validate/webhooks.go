package main

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"knative.dev/pkg/apis"
	"knative.dev/pkg/webhook/resourcesemantics"

	kafkabrokerv1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/eventing/v1"
	kafkaeventingv1alpha1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/eventing/v1alpha1"
	kafkamessagingv1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/messaging/v1"
	kafkamessagingv1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/messaging/v1beta1"
	kafkasourcesv1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/sources/v1"
	kafkasourcesv1beta1 "knative.dev/eventing-kafka-broker/control-plane/pkg/apis/sources/v1beta1"
	eventingconfig "knative.dev/eventing/pkg/apis/config"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	eventingv1alpha1 "knative.dev/eventing/pkg/apis/eventing/v1alpha1"
	eventingv1beta2 "knative.dev/eventing/pkg/apis/eventing/v1beta2"
	"knative.dev/eventing/pkg/apis/feature"
	flowsv1 "knative.dev/eventing/pkg/apis/flows/v1"
	channelconfig "knative.dev/eventing/pkg/apis/messaging/config"
	messagingv1 "knative.dev/eventing/pkg/apis/messaging/v1"
	pingconfig "knative.dev/eventing/pkg/apis/sources/config"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
	servingconfig "knative.dev/serving/pkg/apis/config"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	servingv1beta1 "knative.dev/serving/pkg/apis/serving/v1beta1"
	autoscalerconfig "knative.dev/serving/pkg/autoscaler/config"
)

// webhook mirrors one of Knative's admission webhooks: the kinds it handles and
// the contexts it gives SetDefaults and Validate (each webhook's cmd/webhook main
// at the pinned versions; the config stores are filled from ConfigMaps).
type webhook struct {
	name  string
	types map[schema.GroupVersionKind]resourcesemantics.GenericCRD
	// Whether the validating webhook decodes with DisallowUnknownFields.
	strict        bool
	defaultingCtx func(context.Context) context.Context
	validationCtx func(context.Context) context.Context
}

// webhooks builds the three webhooks a cluster with Serving, Eventing and
// eventing-kafka-broker runs, with their config stores loaded from configs.
func webhooks(configs *configMaps) ([]webhook, error) {
	serving := servingconfig.NewStore(configs.logger("serving"))
	eventingDefaults := eventingconfig.NewStore(configs.logger("eventing"))
	channels := channelconfig.NewStore(configs.logger("eventing"))
	pings := pingconfig.NewStore(configs.logger("eventing"))
	features := feature.NewStore(configs.logger("eventing"))
	for _, load := range []struct {
		namespace string
		store     interface{ OnConfigChanged(*corev1.ConfigMap) }
		names     []string
	}{
		{servingNamespace, serving, []string{servingconfig.DefaultsConfigName, servingconfig.FeaturesConfigName, autoscalerconfig.ConfigName}},
		{eventingNamespace, eventingDefaults, []string{eventingconfig.DefaultsConfigName}},
		{eventingNamespace, channels, []string{channelconfig.ChannelDefaultsConfigName}},
		{eventingNamespace, pings, []string{pingconfig.PingDefaultsConfigName}},
		{eventingNamespace, features, []string{feature.FlagsConfigName}},
	} {
		for _, name := range load.names {
			cm, err := configs.get(load.namespace, name)
			if err != nil {
				return nil, err
			}
			load.store.OnConfigChanged(cm)
		}
	}
	if err := configs.err(); err != nil {
		return nil, err
	}

	return []webhook{{
		// knative.dev/serving cmd/webhook: store.ToContext for both; unknown fields
		// allowed (the CRD schemas prune them).
		name: "serving",
		types: map[schema.GroupVersionKind]resourcesemantics.GenericCRD{
			servingv1.SchemeGroupVersion.WithKind("Service"):            &servingv1.Service{},
			servingv1.SchemeGroupVersion.WithKind("Configuration"):      &servingv1.Configuration{},
			servingv1.SchemeGroupVersion.WithKind("Route"):              &servingv1.Route{},
			servingv1.SchemeGroupVersion.WithKind("Revision"):           &servingv1.Revision{},
			servingv1beta1.SchemeGroupVersion.WithKind("DomainMapping"): &servingv1beta1.DomainMapping{},
		},
		strict:        false,
		defaultingCtx: serving.ToContext,
		validationCtx: serving.ToContext,
	}, {
		// knative.dev/eventing cmd/webhook. Its validation context also carries a
		// Kubernetes client for JobSink's dry-run Job, which cannot be done offline,
		// so JobSink (and RequestReply, which needs its CESQL function registered
		// with the cluster) are not listed and are reported as unsupported.
		name: "eventing",
		types: map[schema.GroupVersionKind]resourcesemantics.GenericCRD{
			eventingv1.SchemeGroupVersion.WithKind("Broker"):            &eventingv1.Broker{},
			eventingv1.SchemeGroupVersion.WithKind("Trigger"):           &eventingv1.Trigger{},
			eventingv1beta2.SchemeGroupVersion.WithKind("EventType"):    &eventingv1beta2.EventType{},
			eventingv1alpha1.SchemeGroupVersion.WithKind("EventPolicy"): &eventingv1alpha1.EventPolicy{},
			messagingv1.SchemeGroupVersion.WithKind("Channel"):          &messagingv1.Channel{},
			messagingv1.SchemeGroupVersion.WithKind("Subscription"):     &messagingv1.Subscription{},
			sourcesv1.SchemeGroupVersion.WithKind("PingSource"):         &sourcesv1.PingSource{},
			sourcesv1.SchemeGroupVersion.WithKind("ApiServerSource"):    &sourcesv1.ApiServerSource{},
			sourcesv1.SchemeGroupVersion.WithKind("SinkBinding"):        &sourcesv1.SinkBinding{},
			sourcesv1.SchemeGroupVersion.WithKind("ContainerSource"):    &sourcesv1.ContainerSource{},
			flowsv1.SchemeGroupVersion.WithKind("Parallel"):             &flowsv1.Parallel{},
			flowsv1.SchemeGroupVersion.WithKind("Sequence"):             &flowsv1.Sequence{},
		},
		strict: true,
		defaultingCtx: func(ctx context.Context) context.Context {
			return features.ToContext(channels.ToContext(eventingDefaults.ToContext(ctx)))
		},
		validationCtx: func(ctx context.Context) context.Context {
			return features.ToContext(channels.ToContext(pings.ToContext(eventingDefaults.ToContext(ctx))))
		},
	}, {
		// knative.dev/eventing-kafka-broker control-plane/cmd/webhook-kafka. It
		// validates Brokers too (a stub type checking the Kafka class's config).
		name: "eventing-kafka",
		types: map[schema.GroupVersionKind]resourcesemantics.GenericCRD{
			kafkaeventingv1alpha1.SchemeGroupVersion.WithKind("KafkaSink"):    &kafkaeventingv1alpha1.KafkaSink{},
			kafkasourcesv1.SchemeGroupVersion.WithKind("KafkaSource"):         &kafkasourcesv1.KafkaSource{},
			kafkasourcesv1beta1.SchemeGroupVersion.WithKind("KafkaSource"):    &kafkasourcesv1beta1.KafkaSource{},
			kafkamessagingv1.SchemeGroupVersion.WithKind("KafkaChannel"):      &kafkamessagingv1.KafkaChannel{},
			kafkamessagingv1beta1.SchemeGroupVersion.WithKind("KafkaChannel"): &kafkamessagingv1beta1.KafkaChannel{},
			eventingv1.SchemeGroupVersion.WithKind("Broker"):                  &kafkabrokerv1.BrokerStub{},
		},
		strict:        true,
		defaultingCtx: apis.AllowDifferentNamespace,
		validationCtx: func(ctx context.Context) context.Context {
			return apis.AllowDifferentNamespace(features.ToContext(ctx))
		},
	}}, nil
}

// schemaOnlyKinds are Knative kinds that no webhook validates: the CRD schema
// (checked by kubeconform) is all the API server applies.
var schemaOnlyKinds = map[schema.GroupVersionKind]bool{
	{Group: "networking.internal.knative.dev", Version: "v1alpha1", Kind: "ClusterDomainClaim"}: true,
}
