from tests.pgcluster import PostgresCluster


def test_cluster_answers_sql_as_superuser(pg_cluster: PostgresCluster, pg_database: str) -> None:
    assert pg_cluster.psql("SELECT 1", dbname=pg_database).strip() == "1"


def test_cluster_accepts_password_logins_over_tcp(pg_cluster: PostgresCluster) -> None:
    import psycopg

    with psycopg.connect(pg_cluster.dsn()) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
