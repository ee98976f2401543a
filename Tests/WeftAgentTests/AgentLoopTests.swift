import Logging
import ServiceLifecycle
import Synchronization
import Testing
@testable import WeftAgent

/// What each loop's end means for the agent's service group.
struct AgentLoopTests {
    struct Failed: Error {}
    final class Count: Sendable {
        private let n = Mutex(0)
        @discardableResult func add() -> Int { n.withLock { $0 += 1; return $0 } }
        var value: Int { n.withLock { $0 } }
    }
    let logger = Logger(label: "test")

    /// Runs until cancelled; records that it was.
    func forever(_ ended: Count) -> @Sendable () async throws -> Void {
        { while !Task.isCancelled { try? await Task.sleep(for: .seconds(60)) }; ended.add() }
    }

    @Test func aBestEffortLoopThatFailsLeavesTheOthersRunningAndAnEssentialOneEndsThemAll() async throws {
        let ended = Count()
        let restarts = Count()
        let group = ServiceGroup(configuration: .init(services: [
            AgentLoop("essential", logger: logger, forever(ended)).essential(),
            AgentLoop("flaky", logger: logger) { throw Failed() }.bestEffort(),
            // Restarted after each failure until it succeeds the third time.
            AgentLoop("restarting", restartAfter: .milliseconds(1), logger: logger) {
                if restarts.add() < 3 { throw Failed() }
            }.bestEffort(),
            AgentLoop("fatal", logger: logger) {
                // Ends the group only once the best-effort loops are done with.
                while restarts.value < 3 { try await Task.sleep(for: .milliseconds(5)) }
                try await Task.sleep(for: .milliseconds(50))
                throw Failed()
            }.essential(),
        ], logger: logger))
        await #expect(throws: Failed.self) { try await group.run() }
        #expect(restarts.value == 3)
        #expect(ended.value == 1, "the essential loop was still running and was ended by the fatal one")
    }

    @Test func aGracefulShutdownEndsEveryLoopCleanly() async throws {
        let ended = Count()
        let group = ServiceGroup(configuration: .init(services: [
            AgentLoop("a", logger: logger, forever(ended)).essential(),
            AgentLoop("b", logger: logger, forever(ended)).bestEffort(),
        ], logger: logger))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            try await Task.sleep(for: .milliseconds(20))
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        #expect(ended.value == 2)
    }
}
