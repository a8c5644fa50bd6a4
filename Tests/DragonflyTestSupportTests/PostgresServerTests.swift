import DragonflyTestSupport
import Testing

@Suite(.serialized) struct PostgresServerTests {
    @Test(.timeLimit(.minutes(1)))
    func answersQueriesAndKeepsRows() async throws {
        try await withPostgres(database: "df_support_test") { pg in
            #expect(pg.url == "postgres://postgres@127.0.0.1:\(pg.port)/df_support_test")
            #expect(pg.host == "127.0.0.1")
            #expect(pg.user == "postgres")
            #expect(pg.database == "df_support_test")
            #expect(try await pg.psql("select 41+1") == "42")
            #expect(try await pg.psql("select current_database()") == "df_support_test")

            try await pg.psql("create table peers (id text primary key, port int not null)")
            try await pg.psql("insert into peers values ('peer-a', 4000)")
            #expect(try await pg.psql("select id, port from peers") == "peer-a|4000")
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aFailingStatementThrowsWithPsqlsMessage() async throws {
        try await withPostgres { pg in
            let error = await #expect(throws: TestSupportError.self) {
                try await pg.psql("select * from no_such_table")
            }
            #expect(error?.code == .commandFailed)
            #expect(error?.message.contains("no_such_table") == true)

            try await pg.createDatabase("second")
            #expect(try await pg.psql("select 1", database: "second") == "1")
        }
    }
}
