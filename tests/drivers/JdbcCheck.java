// pgjdbc workload for the driver compatibility test: prints one line per result.
// Usage: java -cp /usr/share/java/postgresql.jar JdbcCheck.java HOST PORT
// Exercises server-side prepared statements (past prepareThreshold) and batch inserts.
import java.sql.*;

public class JdbcCheck {
    public static void main(String[] args) throws Exception {
        String host = args[0].contains(":") ? "[" + args[0] + "]" : args[0];
        String url = "jdbc:postgresql://" + host + ":" + args[1] + "/postgres?user=postgres&prepareThreshold=3";
        try (Connection c = DriverManager.getConnection(url)) {
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.execute("create temp table t (id int primary key, name text, amount numeric(10,2))");
            }
            try (PreparedStatement p = c.prepareStatement("insert into t values (?, ?, ?)")) {
                for (int i = 0; i < 250; i++) {
                    p.setInt(1, i);
                    p.setString(2, "name " + i);
                    p.setBigDecimal(3, new java.math.BigDecimal(i).movePointLeft(2));
                    p.addBatch();
                }
                int[] counts = p.executeBatch();
                System.out.println("batch " + counts.length);
            }
            c.commit();
            try (PreparedStatement p = c.prepareStatement("select id, name, amount from t where id = ?")) {
                StringBuilder sb = new StringBuilder();
                for (int i = 0; i < 10; i++) {
                    p.setInt(1, i * 7);
                    try (ResultSet r = p.executeQuery()) {
                        while (r.next()) {
                            sb.append(r.getInt(1)).append('/').append(r.getString(2)).append('/').append(r.getBigDecimal(3)).append(' ');
                        }
                    }
                }
                System.out.println("prepared " + sb.toString().trim());
            }
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("select count(*), sum(amount) from t")) {
                r.next();
                System.out.println("totals " + r.getLong(1) + " " + r.getBigDecimal(2));
            }
            try (Statement s = c.createStatement()) {
                s.executeQuery("select 1/0");
            } catch (SQLException e) {
                System.out.println("error " + e.getSQLState());
                c.rollback();
            }
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("select 'still usable'")) {
                r.next();
                System.out.println(r.getString(1));
            }
        }
    }
}
