import DragonflyCore
import DragonflyProto
import SwiftProtobuf

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Turns a stored scheduler cluster into the `ClusterConfig` message of `GetClusterConfig`.
///
/// The cluster's `config` and `client_config` JSON objects travel whole in `scheduler_config_json` and
/// `client_config_json`; the keys below are also set in the typed fields (snake_case, as the REST API writes
/// them). A value of the wrong type or out of range is left out of the typed field (the consumer keeps its own
/// default) but stays in the JSON. `revision` is the cluster's last change in Unix milliseconds, so it
/// increases on every change.
enum ClusterConfigMapping {
    static func message(for cluster: ClusterRecord) -> Dragonfly_V1_ClusterConfig {
        var message = Dragonfly_V1_ClusterConfig()
        message.schedulerClusterID = UInt64(cluster.id)
        message.revision = UInt64(max(0, (cluster.updatedAt.timeIntervalSince1970 * 1000).rounded()))
        message.updatedAt = Google_Protobuf_Timestamp(date: cluster.updatedAt)
        message.schedulerConfigJson = (try? StoredJSON.encode(cluster.config)) ?? "{}"
        message.clientConfigJson = (try? StoredJSON.encode(cluster.clientConfig)) ?? "{}"

        let config = cluster.config
        var scheduler = Dragonfly_V1_SchedulerSettings()
        if let value = uint32(config["candidate_parent_limit"]) { scheduler.candidateParentLimit = value }
        if let value = uint32(config["filter_parent_limit"]) { scheduler.filterParentLimit = value }
        if let value = uint32(config["back_to_source_limit"]) { scheduler.backToSourceLimit = value }
        if let value = uint32(config["back_to_source_peers_per_extra"]) {
            scheduler.backToSourcePeersPerExtra = value
        }
        if let value = uint32(config["retry_limit"]) { scheduler.retryLimit = value }
        if let value = uint32(config["max_peers_per_task"]) { scheduler.maxPeersPerTask = value }
        if case .string(let strategy)? = config["strategy"], !strategy.isEmpty { scheduler.strategy = strategy }
        message.scheduler = scheduler

        let clientConfig = cluster.clientConfig
        var client = Dragonfly_V1_ClientSettings()
        if let value = uint32(clientConfig["concurrent_piece_count"]) { client.concurrentPieceCount = value }
        if let value = uint32(clientConfig["upload_slots"]) { client.uploadSlots = value }
        message.client = client
        return message
    }

    private static func uint32(_ value: JSONValue?) -> UInt32? {
        guard case .number(let number)? = value, number.rounded() == number else { return nil }
        return UInt32(exactly: number)
    }
}
